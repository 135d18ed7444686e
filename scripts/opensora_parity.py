"""Open-Sora's own code, run from a checkout of hpcaitech/Open-Sora, against lvdm.

Not part of the test suite: lvdm neither ships nor imports Open-Sora; this script runs Open-Sora's
modules from a checkout you provide (nothing of Open-Sora is copied) on CPU in float32, with a tiny
random model converted by lvdm's own converter (``lvdm.models.convert.opensora``).

``--check sampler`` (default; a v1.2 checkout, tag ``v1.2.0``): Open-Sora 1.2's sampler — its
``RFLOW(**scheduler)`` of ``configs/opensora-v1-2/inference/sample.py`` (timestep transform, 30
steps, guidance 7), its ``prepare_multi_resolution_info`` / ``apply_mask_strategy`` (what
``scripts/inference.py`` calls), its ``T5Encoder.encode`` / ``null`` (the learned null caption)
and its ``STDiT3`` — against ``lvdm sample --preset opensora-v1.2-stdit3-xl2``'s code path
(``lvdm.generation.generator.apply_preset`` + ``LatentDiffusionModule.generate``), from the same initial noise
(lvdm's: prompt ``i`` from seed ``seed + i``) and the same caption embeddings (random tensors in
place of T5's outputs, padded as T5's are). It prints one row per case: the max |difference| of
the final latents, their max |value| and pass (difference ≤ 1e-4 · max(1, max |value|)). The
cases: a square size with padded and with full-length captions (the learned null caption sees
its prompt's mask), Open-Sora's 240p 9:16 (240×426 px: latents floored to 30×53, the pixel size
in the micro-conditions and the shift), an image (T = 1: fps 120) and two fps micro-conditions.

``--check stdit3`` / ``--check stdit`` (a v1.2.0 / v1.0.0 checkout): one forward pass of
Open-Sora's STDiT3 / STDiT against lvdm's STDiT.

    mkdir -p /tmp/os12 && git --git-dir=<Open-Sora git dir> archive v1.2.0 | tar -x -C /tmp/os12
    pip install --target /tmp/osdeps --no-deps timm==0.9.16 rotary-embedding-torch==0.5.3 beartype
    PYTHONPATH=src:/tmp/osdeps python scripts/opensora_parity.py --opensora-src /tmp/os12

(timm and rotary-embedding-torch at the versions Open-Sora 1.2 pins in ``requirements.txt``.)

What runs and what stands in:

* Open-Sora's modules are imported by path, without their packages' ``__init__.py`` files:
  ``opensora/models/__init__.py`` imports every model, the VAEs and the text encoders
  (diffusers, transformers' T5, colossalai), ``schedulers/__init__.py`` IDDPM and DPM-Solver
  (colossalai), ``datasets/__init__.py`` the data pipeline (torchvision, pandas).
* Fake modules, import-time only and unused by the numbers: ``mmengine.registry.Registry`` (the
  ``@MODELS.register_module`` decorators of ``opensora/registry.py``), ``opensora.utils.ckpt_utils``
  (colossalai, torchvision; its ``load_checkpoint`` serves ``from_pretrained`` only),
  ``opensora.datasets.utils`` (torchvision; ``read_from_path`` loads reference images, none here),
  ``ftfy`` (T5's caption cleaning; no text is encoded here). ``opensora.datasets.IMG_FPS`` (the
  fps of images) is read from ``opensora/datasets/datasets.py`` as written there.
* timm's ``Mlp`` / ``DropPath`` are timm's own ``timm/layers/mlp.py`` / ``drop.py``, imported
  without ``timm/__init__.py`` (which needs torchvision).
* The one numeric stand-in: ``xformers.ops.memory_efficient_attention`` with
  ``fmha.BlockDiagonalMask`` (Open-Sora's cross-attention; xformers has no CPU kernel). It is
  replaced by its definition, softmax(q·kᵀ/√d + bias)·v with each query block attending to its
  own key block, computed as Open-Sora's own CPU attention is (matmul → softmax → matmul).
* T5 itself is not run: a ``T5Encoder`` object (Open-Sora's class, its ``encode`` and ``null``)
  whose ``t5.get_text_embeddings`` hands out the script's random caption embeddings.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.machinery
import importlib.util
import math
import runpy
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

PRESET = "opensora-v1.2-stdit3-xl2"
TINY = dict(depth=2, hidden_size=64, num_heads=4)  # both sides; caption width and length below
CAPTION_DIM, CAPTION_LEN = 32, 12
PROMPTS = ["a red square moving left", "a blue circle"]
SEED = 100
RTOL = 1e-4


# ------------------------------------------------------------------ Open-Sora's modules by path
def _module(name: str, folder: Optional[Path] = None, **attrs) -> types.ModuleType:
    """A module in ``sys.modules`` holding ``attrs``; with ``folder`` a package whose
    ``__init__.py`` is not run, its submodules imported from ``folder``."""
    spec = importlib.machinery.ModuleSpec(name, None, is_package=folder is not None)
    if folder is not None:
        spec.submodule_search_locations = [str(folder)]
    mod = importlib.util.module_from_spec(spec)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _unused(what: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"{what} is stood in by scripts/opensora_parity.py and not used by the parity run")
    return refuse


class _BlockDiagonalMask:
    """xformers' ``fmha.BlockDiagonalMask``: query block i attends to key block i only."""

    def __init__(self, q_lens, kv_lens):
        self.q_lens, self.kv_lens = list(q_lens), list(kv_lens)

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        return cls(q_seqlen, kv_seqlen if kv_seqlen is not None else q_seqlen)

    def bias(self) -> torch.Tensor:
        bias = torch.full((sum(self.q_lens), sum(self.kv_lens)), -math.inf)
        q0 = k0 = 0
        for nq, nk in zip(self.q_lens, self.kv_lens):
            bias[q0:q0 + nq, k0:k0 + nk] = 0.0
            q0, k0 = q0 + nq, k0 + nk
        return bias


def _memory_efficient_attention(q, k, v, p=0.0, attn_bias=None):
    """xformers' attention on ``[B, M, H, K]`` tensors: softmax(q·kᵀ/√K + bias)·v (dropout 0)."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, M, K]
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if attn_bias is not None:
        attn = attn + attn_bias.bias().to(attn)
    return (attn.softmax(dim=-1) @ v).transpose(1, 2).contiguous()  # xformers returns [B, M, H, K] contiguous


def _constants(path: Path, *names: str) -> dict:
    """The literal values of the top-level ``name = ...`` of ``path`` that exist."""
    found = {}
    for node in ast.parse(path.read_text()).body if path.is_file() else []:
        for target in node.targets if isinstance(node, ast.Assign) else []:
            if getattr(target, "id", None) in names:
                found[target.id] = ast.literal_eval(node.value)
    return found


def _timm(dependency_hint: str) -> None:
    """timm's Mlp and DropPath from timm's own files, without ``timm/__init__.py``."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"timm is not importable: {dependency_hint}")
    root = Path(list(spec.submodule_search_locations)[0])
    _module("timm", root)
    _module("timm.layers", root / "layers")
    mlp, drop = importlib.import_module("timm.layers.mlp"), importlib.import_module("timm.layers.drop")
    _module("timm.models", root / "models")
    _module("timm.models.layers", DropPath=drop.DropPath)
    _module("timm.models.vision_transformer", Mlp=mlp.Mlp)


def install(src: Path) -> None:
    """Make ``import opensora....`` load the checkout ``src`` (see the module docstring)."""
    hint = "pip install --target DIR --no-deps timm==0.9.16 rotary-embedding-torch==0.5.3 beartype; PYTHONPATH=DIR"
    pkg = src / "opensora"
    if not (pkg / "models" / "stdit").is_dir():
        raise SystemExit(f"{src} is not an Open-Sora checkout: {pkg / 'models' / 'stdit'} does not exist")
    if importlib.util.find_spec("rotary_embedding_torch") is None:
        raise SystemExit(f"rotary_embedding_torch is not importable (STDiT3's RoPE): {hint}")
    _timm(hint)
    ops = _module("xformers.ops", memory_efficient_attention=_memory_efficient_attention,
                  fmha=_module("xformers.ops.fmha", BlockDiagonalMask=_BlockDiagonalMask))
    _module("xformers", ops=ops)
    registry = type("Registry", (), {"__init__": lambda self, *a, **k: None,
                                     "register_module": lambda self, *a, **k: (lambda obj: obj)})
    _module("mmengine", registry=_module("mmengine.registry", Registry=registry))
    _module("ftfy", fix_text=_unused("ftfy.fix_text"))
    _module("opensora", pkg)
    for sub in ("acceleration", "models", "models.layers", "models.stdit", "models.text_encoder", "schedulers",
                "schedulers.iddpm", "utils"):
        _module(f"opensora.{sub}", pkg / sub.replace(".", "/"))
    datasets = pkg / "datasets"
    _module("opensora.datasets", datasets, **_constants(datasets / "datasets.py", "IMG_FPS"))  # v1.2 on
    _module("opensora.datasets.utils", read_from_path=_unused("opensora.datasets.utils.read_from_path"))
    _module("opensora.utils.ckpt_utils", load_checkpoint=_unused("opensora.utils.ckpt_utils.load_checkpoint"))


# ------------------------------------------------------------------------------ the tiny model
def randomise(model: nn.Module, scale: float) -> None:
    """Random values in every learned weight (``rope.freqs`` is a fixed code held as a
    parameter; zero-initialised layers such as the fps embedder's output would hide a condition)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "rope.freqs":
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def opensora_stdit3(scale: float = 0.1) -> nn.Module:
    stdit3 = importlib.import_module("opensora.models.stdit.stdit3")
    torch.manual_seed(0)  # the learned null caption (y_embedding) is a random buffer
    ref = stdit3.STDiT3(stdit3.STDiT3Config(caption_channels=CAPTION_DIM, model_max_length=CAPTION_LEN,
                                            qk_norm=True, **TINY)).eval()
    randomise(ref, scale)
    return ref


def lvdm_stdit3(ref: nn.Module) -> nn.Module:
    """lvdm's preset, resized like ``ref``, with ``ref``'s weights through lvdm's converter."""
    from lvdm.models.convert import opensora
    from lvdm.models.presets import preset

    model = preset(PRESET, context_dim=CAPTION_DIM, context_length=CAPTION_LEN, **TINY).eval()
    model.load_state_dict(opensora.convert_state_dict(ref.state_dict(), model), strict=True)
    return model


def captions(full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random caption embeddings ``[B, L, C]`` (in place of T5's) and their mask ``[B, L]``:
    T5 pads short prompts (here 5 and 3 real tokens) unless ``full``."""
    y = torch.randn(len(PROMPTS), CAPTION_LEN, CAPTION_DIM, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(len(PROMPTS), CAPTION_LEN, dtype=torch.long)
    if not full:
        for i, n in enumerate((5, 3)):
            mask[i, n:] = 0
    return y, mask


# ------------------------------------------------------------------------------- the sampler
@dataclass(frozen=True)
class Case:
    """One sampling run. ``resolution`` / ``aspect_ratio`` name a size in Open-Sora's table
    (``opensora/datasets/aspect.py``); ``num_frames`` are pixel frames (Open-Sora's VAE 1.2:
    17 → 5 latent frames, an image → 1); ``fps`` is the config's (Open-Sora conditions images on
    ``IMG_FPS``); ``full_captions``: no caption padding (T5 pads short prompts)."""

    name: str
    resolution: str
    aspect_ratio: str
    num_frames: int
    fps: float = 24.0
    full_captions: bool = False


_SQUARE, _WIDE = ("144p", "1:1"), ("240p", "9:16")
CASES = [
    Case("square 144p 1:1 (192x192 px), 17 frames, fps 24", *_SQUARE, 17),
    Case("square 144p 1:1, full-length captions", *_SQUARE, 17, full_captions=True),
    Case("240p 9:16 (240x426 px, latent 30x53), 17 frames, fps 24", *_WIDE, 17),
    Case("image (T = 1) 144p 1:1, config fps 24", *_SQUARE, 1),
    Case("fps 120, 144p 1:1, 17 frames", *_SQUARE, 17, fps=120.0),
    Case("fps 8, 240p 9:16, 17 frames", *_WIDE, 17, fps=8.0),
]


def pixel_size(case: Case) -> tuple[int, int]:
    return tuple(importlib.import_module("opensora.datasets.aspect").get_image_size(case.resolution,
                                                                                   case.aspect_ratio))


def latent_shape(case: Case) -> tuple[int, int, int, int]:
    """Open-Sora VAE 1.2's latent (4 channels; 17-frame micro-batches of 5 latent frames, a
    remainder padded to 4; 8× spatially, floored — as its ``get_latent_size``)."""
    n, (h, w) = case.num_frames, pixel_size(case)
    return 4, 5 * (n // 17) + -(-(n % 17) // 4), h // 8, w // 8


def lvdm_noise(shape) -> torch.Tensor:
    """The initial noise ``LatentDiffusionModule.generate`` draws: prompt i from seed SEED + i."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(SEED + i))
                        for i in range(len(PROMPTS))])


def opensora_sample(ref: nn.Module, cfg: dict, case: Case, noise: torch.Tensor) -> torch.Tensor:
    """Open-Sora 1.2's ``scripts/inference.py`` sampling step, on the tiny model."""
    rf = importlib.import_module("opensora.schedulers.rf")
    iu = importlib.import_module("opensora.utils.inference_utils")
    t5 = importlib.import_module("opensora.models.text_encoder.t5")
    args = iu.prepare_multi_resolution_info(cfg["multi_resolution"], len(PROMPTS), pixel_size(case),
                                            case.num_frames, case.fps, "cpu", torch.float32)
    y, mask = captions(case.full_captions)
    encoder = object.__new__(t5.T5Encoder)  # its encode / null; T5 replaced by the caption tensors
    encoder.t5 = types.SimpleNamespace(get_text_embeddings=lambda prompts: (y, mask))
    encoder.y_embedder = ref.y_embedder  # as inference.py: text_encoder.y_embedder = model.y_embedder
    scheduler = rf.RFLOW(**{k: v for k, v in cfg["scheduler"].items() if k != "type"})
    z = noise.clone()
    masks = iu.apply_mask_strategy(z, [[]] * len(PROMPTS), [""] * len(PROMPTS), 0, align=cfg.get("align"))
    with torch.no_grad():
        return scheduler.sample(ref, encoder, z=z, prompts=PROMPTS, device="cpu", additional_args=args,
                                mask=masks, progress=False)


def _lvdm_parts():
    """The caption source and the latent-recording compressor of the lvdm side."""
    from lvdm.compressors.base import Compressor
    from lvdm.text.base import TextEncoder

    class Captions(TextEncoder):
        """The script's random caption embeddings in place of T5's, looked up by prompt."""

        def __init__(self, full: bool):
            super().__init__(dim=CAPTION_DIM, max_length=CAPTION_LEN)
            self.y, self.mask = captions(full)

        @property
        def trainable(self) -> bool:
            return False

        def forward(self, prompts):
            rows = [PROMPTS.index(p) for p in prompts]
            return self.y[rows], self.mask[rows].bool()

    class LatentRecorder(Compressor):
        """Open-Sora VAE 1.2's latent shape (4 channels, 8× spatially, 17 → 5 and 1 → 1 frames);
        decoding keeps the sampler's final latents."""

        def __init__(self):
            super().__init__(latent_channels=4, time_downsample=4, spatial_downsample=8, scale_factor=1.0,
                             shift_factor=0.0, causal_time=True)
            self.latents = None

        def encode_raw(self, video):
            raise RuntimeError("the parity run only samples")

        def decode_raw(self, latent):
            self.latents = latent.clone()
            return latent

    return Captions, LatentRecorder


def lvdm_sample(model: nn.Module, case: Case) -> torch.Tensor:
    """``lvdm sample --preset opensora-v1.2-stdit3-xl2 --fps F``'s path: ``apply_preset`` then
    ``generate`` at Open-Sora's pixel size (lvdm floors the latent as Open-Sora's VAE does)."""
    from lvdm.generation.generator import apply_preset
    from lvdm.training.module import LatentDiffusionModule

    captions_cls, recorder_cls = _lvdm_parts()
    module = LatentDiffusionModule(model, captions_cls(case.full_captions), compressor=recorder_cls(),
                                   sample_shape=(1, 64, 64)).eval()
    apply_preset(module, PRESET)
    module.generate(PROMPTS, case.num_frames, *pixel_size(case), seed=SEED, fps=case.fps)
    return module.compressor.latents


@dataclass
class Row:
    case: str
    diff: Optional[float] = None
    value: Optional[float] = None
    error: Optional[str] = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.diff <= RTOL * max(1.0, self.value)


def run_case(ref: nn.Module, model: nn.Module, cfg: dict, case: Case) -> Row:
    try:
        want = opensora_sample(ref, cfg, case, lvdm_noise(latent_shape(case)))
        got = lvdm_sample(model, case)
        if got.shape != want.shape:
            raise ValueError(f"lvdm's latents are {tuple(got.shape)}, Open-Sora's {tuple(want.shape)}")
        return Row(case.name, (got - want).abs().max().item(), want.abs().max().item())
    except Exception as err:  # one failing case is reported, the others still run
        return Row(case.name, error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")


def format_table(rows: list[Row]) -> str:
    width = max(len(r.case) for r in rows)
    lines = [f"{'case':<{width}}  {'max|diff|':>9}  {'max|value|':>10}  result",
             f"{'-' * width}  {'-' * 9}  {'-' * 10}  ------"]
    for r in rows:
        if r.error is not None:
            lines.append(f"{r.case:<{width}}  {'-':>9}  {'-':>10}  FAIL ({r.error})")
        else:
            lines.append(f"{r.case:<{width}}  {r.diff:9.2e}  {r.value:10.3g}  {'pass' if r.passed else 'FAIL'}")
    lines.append(f"pass: max|diff| <= {RTOL:g} * max(1, max|value|) (float32, CPU)")
    return "\n".join(lines)


def check_sampler(src: Path) -> str:
    config = src / "configs" / "opensora-v1-2" / "inference" / "sample.py"
    if not config.is_file():
        raise SystemExit(f"{config} does not exist: --check sampler needs an Open-Sora 1.2 checkout (tag v1.2.0)")
    cfg = runpy.run_path(str(config))
    ref = opensora_stdit3()
    model = lvdm_stdit3(ref)
    print(f"Open-Sora {config.relative_to(src)}: scheduler {cfg['scheduler']}, fps {cfg['fps']}; "
          f"lvdm preset {PRESET}; tiny STDiT3 {TINY}, captions {CAPTION_LEN}x{CAPTION_DIM}")
    return format_table([run_case(ref, model, cfg, case) for case in CASES])


# ------------------------------------------------------------------------- one forward pass
def _text(b: int, length: int, dim: int):
    y = torch.randn(b, 1, length, dim, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, length // 2:] = 0
    return y, mask


def forward_stdit3() -> float:
    from lvdm.models.convert import opensora
    from lvdm.models.presets import preset

    stdit3 = importlib.import_module("opensora.models.stdit.stdit3")
    ref = stdit3.STDiT3(stdit3.STDiT3Config(caption_channels=32, model_max_length=10, qk_norm=True, **TINY)).eval()
    randomise(ref, 0.2)
    model = preset(PRESET, context_dim=32, context_length=10, **TINY).eval()
    model.load_state_dict(opensora.convert_state_dict(ref.state_dict(), model), strict=True)
    x = torch.randn(2, 4, 3, 6, 10, generator=torch.Generator().manual_seed(2))  # a non-square latent
    t = torch.tensor([10.0, 700.0])
    y, mask = _text(2, 10, 32)
    fps = torch.tensor([24.0, 8.0])
    # STDiT3 scales positions by sqrt(h·w) / 512 of the pixel size: 48 × 80 px through an 8× VAE
    height, width = torch.tensor([48.0, 48.0]), torch.tensor([80.0, 80.0])
    with torch.no_grad():
        want = ref(x, t, y, mask=mask, fps=fps, height=height, width=width)[:, :4]
        got = model(x, t, y[:, 0], mask.bool(), fps=fps)  # resolution from the latent × latent_scale 8
    return (got - want).abs().max().item()


def forward_stdit() -> float:
    from lvdm.models.convert import opensora
    from lvdm.models.presets import preset

    stdit = importlib.import_module("opensora.models.stdit.stdit")
    ref = stdit.STDiT(input_size=(3, 8, 8), caption_channels=32, model_max_length=10, space_scale=0.5, **TINY).eval()
    randomise(ref, 0.2)
    model = preset("opensora-v1.0-stdit-xl2", context_dim=32, context_length=10, **TINY).eval()
    model.load_state_dict(opensora.convert_state_dict(ref.state_dict(), model), strict=True)
    x = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10.0, 700.0])
    y, mask = _text(2, 10, 32)
    with torch.no_grad():
        want = ref(x, t, y, mask=mask)[:, :4]
        got = model(x, t, y[:, 0], mask.bool())
    return (got - want).abs().max().item()


def check_forward(model: str) -> str:
    from lvdm.ops.attention import use_backend

    run = forward_stdit3 if model == "stdit3" else forward_stdit
    # Open-Sora's CPU path is an explicit matmul → softmax → matmul: lvdm's `math` backend is the
    # like-for-like comparison; SDPA accumulates differently (STDiT v1.0's temporal attention on
    # un-normalised tokens amplifies that rounding).
    lines = []
    for backend in ("math", "sdpa"):
        with use_backend(backend):
            diff = run()
        lines.append(f"{model}: max |lvdm - Open-Sora| = {diff:.3g} with lvdm's {backend} attention "
                     "(float32, tiny random model, padded captions)")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opensora-src", "--checkout", dest="src", type=Path, required=True,
                        help="an Open-Sora checkout (the folder holding opensora/ and configs/)")
    parser.add_argument("--check", choices=["sampler", "stdit3", "stdit"], default="sampler",
                        help="sampler: Open-Sora 1.2's sampler against lvdm sample --preset (default); "
                             "stdit3 / stdit: one forward pass of the v1.2 / v1.0 model")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    install(args.src)
    print(check_sampler(args.src) if args.check == "sampler" else check_forward(args.check))


if __name__ == "__main__":
    main()
