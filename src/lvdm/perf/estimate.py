"""``lvdm estimate``: parameters, FLOPs, GPU-hours, seconds per video and memory per GPU of a
backbone configuration (any :class:`~lvdm.models.contract.Backbone`: ``DiT``, ``STDiT`` and the
presets), before anything is trained. The backbone is built on the ``meta`` device (no memory,
exact parameter counts at any size); FLOPs come from its declared ``forward_flops``.

Memory model (per GPU, bytes; ``P`` parameters, ``N`` data-parallel GPUs; mixed precision
with fp32 master weights and AdamW, the 16 bytes/parameter of the ZeRO paper):

* DDP: ``16·P`` (fp32 weights 4 + fp32 gradients 4 + Adam moments 8) + ``2·P`` bf16 weight copies.
* ZeRO-2: ``2·P`` bf16 weights + ``(2 + 12)·P / N`` (gradients and fp32 weights+moments sharded).
* ZeRO-3: ``16·P / N`` + the largest gathered block in bf16.
* ZeRO-3 + CPU offload: only the gathered block stays on the GPU (``16·P / N`` in host memory).

Activations (bf16, 2 bytes) are counted by hooks on the linears and norms of the backbone's
block units (the contract's ``block_class``: what activation checkpointing wraps) during one
forward on ``meta`` tensors, per video token: every ``nn.Linear``
keeps its input for the weight gradient, and its output is kept by what reads it next
(attention keeps q/k/v, GELU its input, a gate its factor), so a linear counts ``in + out``
values; every norm keeps its input and its output. A linear that reads one vector per sample
(adaLN) or the text tokens counts what it reads. Flash/SDPA attention
stores no score matrix. For a DiT block with cross-attention and MLP ratio 4 this gives
``26·D`` per token; ``tests/perf/test_estimate.py`` checks the rule against the tensors
autograd saves (``torch.autograd.graph.saved_tensors_hooks``) on tiny DiT and STDiT models of
eight layouts, within 10 %. Activation checkpointing keeps only each checkpointed block's input
(1·D) plus one block's activations while it is recomputed. Sequence parallelism splits the
tokens, so activations divide by the SP size. These are estimates (allocator fragmentation,
temporary buffers, the layers outside the blocks and the text encoder are not counted): the
benchmark's measured peak memory is the check.

With ``--buckets`` (a bucket config, or a recipe or fragment that holds one under
``data.init_args.buckets``) the memory of every bucket — its clip shape at its own batch size
— is estimated under ``--strategy``, and buckets whose estimate exceeds the GPU's memory are
flagged before anything is launched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from torch import nn

from lvdm.checkpoints.moved import current_path
from lvdm.checkpoints.stored_recipe import resolve_allowed
from lvdm.models.contract import is_backbone
from lvdm.models.flops import patch_grid
from lvdm.perf.step_flops import dit_forward_flops, dit_training_flops, sampling_flops
from lvdm.perf.hardware import PEAKS

SECONDS_PER_MONTH = 30 * 24 * 3600
DIT = "lvdm.models.dit.DiT"

#: How each modern preset's source turns a clip into tokens (``--preset``'s defaults, every one
#: overridable by its flag): its VAE's (temporal, spatial) compression with the causal first frame
#: (``1 + (frames - 1) / temporal`` latent frames), its text tokens and whether a step runs two
#: forwards (CFG; HunyuanVideo embeds its guidance). The clip is the preset's ``sampler.size``.
PRESET_CLIPS: dict[str, dict[str, Any]] = {
    # HunyuanVideo: 884 causal VAE, LLaVA-Llama prompt up to 256 tokens, embedded guidance
    "hunyuanvideo": dict(temporal_compression=4, spatial_compression=8, causal=True, text_len=256, guidance=False),
    # Open-Sora 2.0: HunyuanVideo's VAE, T5-XXL up to 512 tokens, CFG
    "opensora-2.0": dict(temporal_compression=4, spatial_compression=8, causal=True, text_len=512, guidance=True),
    # Wan 2.1: Wan-VAE (4 × 8 × 8 causal), umT5 padded to 512 tokens, CFG
    "wan2.1-t2v-1.3b": dict(temporal_compression=4, spatial_compression=8, causal=True, text_len=512, guidance=True),
    # LTX-Video: 8 × 32 × 32 causal VAE, T5 up to 128 tokens, CFG
    "ltx-video-2b": dict(temporal_compression=8, spatial_compression=32, causal=True, text_len=128, guidance=True),
}


def _read_recipe(path: str) -> dict[str, Any]:
    """Pull the numbers an estimate needs out of an ``lvdm fit`` recipe."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"recipe {path!r} does not exist")
    cfg = yaml.safe_load(p.read_text()) or {}
    try:
        module = cfg["model"]["init_args"]
        denoiser = {"class_path": str(module["denoiser"]["class_path"]),
                    "init_args": dict(module["denoiser"].get("init_args") or {})}
    except (KeyError, TypeError) as err:
        raise ValueError(f"recipe {path!r} has no model.init_args.denoiser.class_path ({err})") from None
    return {"denoiser": denoiser, **_recipe_module(module), **_recipe_data(cfg)}


def _recipe_module(module: dict[str, Any]) -> dict[str, Any]:
    """Clip size, text length, sampling steps, guidance and compression of a recipe's module."""
    out: dict[str, Any] = {}
    shape = module.get("sample_shape")
    if shape:
        out["frames"], out["height"], out["width"] = (int(v) for v in shape)
    text = (module.get("text_encoder") or {}).get("init_args") or {}
    if "max_length" in text:
        out["text_len"] = int(text["max_length"])
    objective = (module.get("objective") or {}).get("init_args") or {}
    if "num_sampling_steps" in objective:
        out["sampling_steps"] = int(objective["num_sampling_steps"])
    if "guidance_scale" in module:
        out["guidance"] = float(module["guidance_scale"]) != 1.0
    compressor = str((module.get("compressor") or {}).get("class_path", ""))
    if compressor.endswith("PixelCompressor"):
        out["spatial_compression"], out["temporal_compression"] = 1, 1
    return out


def _recipe_data(cfg: dict[str, Any]) -> dict[str, Any]:
    """Batch size and clip size of a recipe's data section, and its step count."""
    out: dict[str, Any] = {}
    data = (cfg.get("data") or {}).get("init_args") or {}
    if "batch_size" in data:
        out["micro_batch"] = int(data["batch_size"])
    if "num_frames" in data:
        out["frames"] = int(data["num_frames"])
    if "resolution" in data:
        out["height"] = out["width"] = int(data["resolution"])
    trainer = cfg.get("trainer") or {}
    if trainer.get("max_steps", -1) and int(trainer.get("max_steps", -1)) > 0:
        out["steps"] = int(trainer["max_steps"])
    return out


def block_units(model: nn.Module) -> list[nn.Module]:
    """The backbone's block units: the outermost submodules of its ``block_class`` (the
    checkpoint and compile units of the contract), in module order."""
    units: list[nn.Module] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, model.block_class) and not any(name.startswith(p + ".") for p in inside):
            units.append(module)
            inside.append(name)
    return units


def _meta_inputs(model: nn.Module, latent: tuple[int, int, int], text_len: int) -> tuple[tuple, dict]:
    """Arguments of one ``forward`` on ``meta`` tensors: one sample, ``text_len`` text tokens
    (none: the model's null caption), a class label for a class-conditional model."""
    meta = {"device": "meta"}
    kwargs: dict[str, Any] = {}
    if model.context_dim and text_len:
        kwargs["context"] = torch.empty(1, text_len, model.context_dim, **meta)
        kwargs["context_mask"] = torch.ones(1, text_len, dtype=torch.bool, **meta)
    if "class_labels" in model.micro_conditions and getattr(model, "num_classes", 0):
        kwargs["class_labels"] = torch.zeros(1, dtype=torch.long, **meta)
    return (torch.empty(1, model.in_channels, *latent, **meta), torch.zeros(1, **meta)), kwargs


class _Counted(Exception):
    """Every kind of block unit has run: the rest of the forward is not needed."""


def _unit_kind(unit: nn.Module) -> tuple:
    return type(unit), tuple((name, tuple(p.shape)) for name, p in unit.named_parameters())


def activation_values_per_token(model: nn.Module, latent: tuple[int, int, int], text_len: int = 0) -> list[float]:
    """Values each block unit keeps for the backward pass per video token (the module
    docstring's rule), counted by hooks on one forward of the ``meta`` backbone on a latent of
    ``(T, H, W)``: ``in + out`` values of every linear, ``2 ×`` the input of every norm.
    Linears that read one vector per sample (adaLN modulations) or the text tokens count what
    they really read. The forward stops once one unit of each kind (class and parameter
    shapes) has run; the others of a kind count as it does."""
    units = block_units(model)
    kinds = [_unit_kind(unit) for unit in units]
    first = {kind: unit for kind, unit in reversed(list(zip(kinds, units)))}  # the first unit of each kind
    values, done, hooks = dict.fromkeys(first, 0), set(), []

    def count(kind, n):
        values[kind] += n

    def finished(kind):
        done.add(kind)
        if len(done) == len(first):
            raise _Counted

    for kind, unit in first.items():
        for module in unit.modules():
            if isinstance(module, nn.Linear):
                hooks.append(module.register_forward_hook(
                    lambda mod, args, out, kind=kind: count(kind, args[0].numel() + out.numel())))
            elif type(module).__name__.endswith("Norm"):
                hooks.append(module.register_forward_hook(
                    lambda mod, args, out, kind=kind: count(kind, 2 * args[0].numel())))
        hooks.append(unit.register_forward_hook(lambda *_, kind=kind: finished(kind)))
    args, kwargs = _meta_inputs(model, latent, text_len)
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except _Counted:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    tokens = math.prod(patch_grid(model.patch_size, latent))
    return [values[kind] / tokens for kind in kinds]


@dataclass(frozen=True)
class MemoryModel:
    """What the memory model reads from a backbone: parameters, the largest block unit's
    parameters (ZeRO-3 gathers one at a time), the token width and the activation values per
    video token of each block unit."""

    num_params: int
    block_params: int
    hidden_size: int
    unit_values: tuple[float, ...]

    @classmethod
    def from_model(cls, model: nn.Module, latent: tuple[int, int, int], text_len: int = 0) -> MemoryModel:
        """Read a ``meta`` backbone, its activations counted on a latent of ``(T, H, W)``."""
        units = block_units(model)
        return cls(
            num_params=sum(p.numel() for p in model.parameters()),
            block_params=max((sum(p.numel() for p in u.parameters()) for u in units), default=0),
            hidden_size=int(model.hidden_size),
            unit_values=tuple(activation_values_per_token(model, latent, text_len)),
        )

    def activation_bytes(self, tokens: float, checkpoint_fraction: float = 0.0, bytes_per_value: int = 2) -> float:
        """Bytes of stored activations for ``tokens`` video tokens (on one GPU) with a share
        ``checkpoint_fraction`` of the block units checkpointed."""
        full = (1 - checkpoint_fraction) * sum(self.unit_values)
        kept = checkpoint_fraction * len(self.unit_values) * self.hidden_size
        recompute = max(self.unit_values, default=0) if checkpoint_fraction > 0 else 0
        return (full + kept + recompute) * bytes_per_value * tokens


def memory_per_gpu(
    model: MemoryModel,
    tokens_per_sample: int,
    micro_batch: int,
    num_gpus: int,
    sp_size: int = 1,
    checkpoint_fraction: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Bytes per GPU of model states and activations under DDP / ZeRO-2 / ZeRO-3 / ZeRO-3+offload.

    Args:
        model: the backbone's :class:`MemoryModel`.
        tokens_per_sample: video tokens of one sample.
        micro_batch: samples per GPU per step (per SP group).
        num_gpus: GPUs the states are sharded over (data-parallel × SP ranks).
        sp_size: sequence-parallel group size (tokens split across it).
        checkpoint_fraction: share of blocks with activation checkpointing.
    """
    p, n, block = model.num_params, max(num_gpus, 1), model.block_params
    act = model.activation_bytes(micro_batch * tokens_per_sample / sp_size, checkpoint_fraction)
    states = {
        "ddp": 16 * p + 2 * p,
        "zero2": 2 * p + 14 * p / n,
        "zero3": 16 * p / n + 2 * block,
        "zero3_offload": 2 * block,
    }
    return {k: {"states": v, "activations": act, "total": v + act} for k, v in states.items()}


def build_backbone(class_path: str, init_args: dict[str, Any]) -> nn.Module:
    """The backbone ``class_path(**init_args)`` built on the ``meta`` device (no memory, no
    initialisation cost); it must meet :class:`~lvdm.models.contract.Backbone`."""
    # a recipe may come from anyone: only lvdm's (and torch.nn's) classes are built, as when loading
    factory = resolve_allowed(current_path(class_path), "denoiser class_path")
    try:
        with torch.device("meta"):
            model = factory(**init_args)
    except TypeError as err:
        raise ValueError(f"{class_path} does not take these arguments: {err}") from None
    if not is_backbone(model):
        raise ValueError(f"{class_path} builds a {type(model).__name__}, which does not meet the backbone "
                         "contract (lvdm.models.contract.Backbone): lvdm estimate cannot model it")
    return model


def _backbone(from_recipe: dict[str, Any], has_recipe: bool, **flags: Any) -> nn.Module:
    """The backbone to estimate (on ``meta``): the recipe's, with the flags that are given as
    overrides; without a recipe, an Open-Sora-layout DiT (text width 4096) unless the flags say
    otherwise."""
    denoiser = from_recipe.get("denoiser") or {"class_path": DIT, "init_args": {}}
    kwargs: dict[str, Any] = dict(denoiser["init_args"])
    if denoiser["class_path"] == DIT and not kwargs and flags["size"] is None:
        flags["size"] = "XL/2"
    kwargs.update({key: value for key, value in flags.items() if value is not None})
    if not has_recipe:
        kwargs.setdefault("conditioning", "cross_attn")
        kwargs.setdefault("layout", "spatial_temporal")
        kwargs.setdefault("context_dim", 0 if kwargs.get("num_classes") else 4096)
    if kwargs.get("num_classes") and kwargs.get("context_dim"):
        raise ValueError("give either --num_classes or --context_dim (a text model), not both")
    return build_backbone(denoiser["class_path"], kwargs)


def describe(model: nn.Module, num_units: int) -> str:
    """One line naming the backbone: class, contract dimensions and its layout options."""
    options = [str(getattr(model, name)) for name in ("conditioning", "layout", "temporal") if hasattr(model, name)]
    text = (f"{type(model).__name__} D={model.hidden_size} blocks={num_units} heads={model.num_heads} "
            f"patch={tuple(model.patch_size)}")
    text += f" {'/'.join(options)}" if options else ""
    return text + (" adaLN-single" if getattr(model, "adaln_single", False) else "")


def _peak_flops(gpu: str, dtype: str, mfu: float) -> float:
    """The table's peak FLOP/s of ``gpu`` at ``dtype``, after checking ``mfu``."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    if gpu not in PEAKS:
        raise ValueError(f"unknown gpu {gpu!r}; choose from {sorted(PEAKS)}")
    peak = PEAKS[gpu].get(dtype)
    if peak is None:
        raise ValueError(f"{gpu} has no {dtype} peak in the table")
    return peak


def estimate(
    recipe: Optional[str] = None,
    preset: Optional[str] = None,
    size: Optional[str] = None,
    conditioning: Optional[Literal["adaln", "cross_attn", "in_context"]] = None,
    layout: Optional[Literal["full", "spatial_temporal"]] = None,
    in_channels: Optional[int] = None,
    context_dim: Optional[int] = None,
    num_classes: Optional[int] = None,
    adaln_single: Optional[bool] = None,
    frames: Optional[int] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    temporal_compression: Optional[int] = None,
    spatial_compression: Optional[int] = None,
    causal: Optional[bool] = None,
    text_len: Optional[int] = None,
    fps: float = 24.0,
    video_seconds: Optional[float] = None,
    linear_frames: int = 1,
    model_scale: float = 1.0,
    dataset_size: int = 0,
    epochs: float = 1.0,
    steps: Optional[int] = None,
    global_batch: int = 256,
    micro_batch: Optional[int] = None,
    training_flops: Optional[float] = None,
    sampling_steps: Optional[int] = None,
    guidance: Optional[bool] = None,
    gpu: str = "h100-sxm",
    dtype: Literal["bf16", "fp16", "tf32", "fp32"] = "bf16",
    mfu: float = 0.5,
    num_gpus: int = 1,
    sp_size: int = 1,
    checkpoint_fraction: float = 0.0,
    convention: Literal["flops", "macs"] = "flops",
    buckets: Optional[str] = None,
    strategy: Literal["ddp", "zero2", "zero3", "zero3_offload"] = "ddp",
    print_report: bool = True,
) -> dict[str, Any]:
    """Estimate the cost of training and sampling a backbone (``DiT``, ``STDiT`` or any other
    meeting :class:`~lvdm.models.contract.Backbone`): parameters, FLOPs per training sample
    and per generated video, training GPU-hours, seconds per video, memory per GPU.

    Flags override the recipe; what neither gives takes the defaults of an Open-Sora-layout
    DiT-XL/2 at 16×256×256 (4-channel SD-VAE latents, 8× spatial, 120 T5 tokens). The DiT
    flags (``size``, ``conditioning``, ``layout``, ``num_classes``, ``adaln_single``) apply to
    backbones that take them.

    Args:
        recipe: an ``lvdm fit`` YAML recipe to read the denoiser (any backbone), clip size, text length,
            sampling steps and batch from.
        preset: a published configuration by name (``lvdm.models.presets``: ``hunyuanvideo``,
            ``opensora-2.0``, ``wan2.1-t2v-1.3b``…) instead of a recipe, built at its real size with
            its source's compression, text length, clip and guidance as defaults.
        size: DiT size preset (``XL/2``, ``L/2``…).
        conditioning: ``adaln``, ``cross_attn`` or ``in_context``.
        layout: ``full`` or ``spatial_temporal``.
        in_channels: latent channels.
        context_dim: text embedding width (0: no text; T5-XXL is 4096).
        num_classes: class labels for a class-conditional model (ImageNet DiT: 1000).
        adaln_single: adaLN-single modulation (one shared linear, as Open-Sora's STDiT, PixArt-α
            and Latte) instead of one adaLN linear per block; ``true`` makes the default
            STDiT-XL/2 the ~764M model Open-Sora describes (per-block adaLN: 1.09B).
        frames: video frames in pixels.
        height: video height in pixels.
        width: video width in pixels.
        temporal_compression: compressor's frame reduction (1 for per-frame VAEs).
        spatial_compression: compressor's height/width reduction (8 for SD-VAE).
        causal: the compressor encodes the first frame alone (causal 3D VAEs: ``1 + (frames - 1) /
            temporal_compression`` latent frames, so 129 frames → 33 at 4×).
        text_len: text tokens per sample.
        fps: frame rate, to express sampling cost per minute of video.
        video_seconds: duration of one generated clip (default ``frames × linear_frames / fps``).
        linear_frames: linear extrapolation: the clip costs this many times the computed one
            (the Sora analysis runs an image DiT once per latent frame: 180).
        model_scale: linear extrapolation of model size: FLOPs and parameters × this (the Sora
            analysis guesses 30 for a ~20B model).
        dataset_size: training samples per epoch.
        epochs: passes over the dataset.
        steps: optimizer steps (instead of dataset_size × epochs / global_batch).
        global_batch: samples per optimizer step over all GPUs.
        micro_batch: samples per GPU per forward, for the memory estimate (default: the
            recipe's batch size, else 1).
        training_flops: total training FLOPs to compare with inference, replacing the computed
            total (e.g. a published figure).
        sampling_steps: denoiser evaluations per video (CFG doubles the batch of each).
        guidance: classifier-free guidance (two forwards per step).
        gpu: device kind from the peak table (``h100-sxm``, ``h200``, ``a100``…).
        dtype: training precision for the peak (``bf16``…).
        mfu: assumed model FLOPs utilisation (0..1).
        num_gpus: GPUs for training.
        sp_size: sequence-parallel group size.
        checkpoint_fraction: share of blocks with activation checkpointing (recompute cost and memory).
        convention: ``flops`` (2 per multiply-add, what GPUs peak at) or ``macs`` (the DiT
            paper's "Gflops", half as many: reproduces documents written that way).
        buckets: a YAML bucket config (``class_path: lvdm.data.buckets.BucketConfig``), or a
            recipe or fragment holding one under ``data.init_args.buckets``: adds the memory of
            every bucket at its batch size, flagging those that do not fit on ``gpu``.
        strategy: the strategy whose memory the bucket table shows (``ddp``, ``zero2``,
            ``zero3``, ``zero3_offload``).
        print_report: print the report.
    """
    flags = dict(size=size, conditioning=conditioning, layout=layout, in_channels=in_channels,
                 context_dim=context_dim, num_classes=num_classes, adaln_single=adaln_single)
    if preset is not None:
        model, from_recipe = _preset_backbone(preset, recipe, flags)
    else:
        from_recipe = _read_recipe(recipe) if recipe else {}
        model = _backbone(from_recipe, bool(recipe), **flags)
    pick = _picker(from_recipe)
    frames = pick(frames, "frames", 16)
    compression = (pick(temporal_compression, "temporal_compression", 1),
                   pick(spatial_compression, "spatial_compression", 8))
    latent = _latent((frames, pick(height, "height", 256), pick(width, "width", 256)), compression,
                     pick(causal, "causal", False))
    text_len = pick(text_len, "text_len", 120) if model.context_dim else 0
    sampling_steps, guidance = pick(sampling_steps, "sampling_steps", 50), pick(guidance, "guidance", True)
    steps = pick(steps, "steps", None) if dataset_size == 0 else steps
    micro_batch = pick(micro_batch, "micro_batch", 1)
    rate = _peak_flops(gpu, dtype, mfu) * mfu
    scale = model_scale * linear_frames * (1.0 if convention == "flops" else 0.5)
    seconds = video_seconds if video_seconds is not None else frames * linear_frames / fps

    result = _flop_costs(model, latent, text_len, scale, checkpoint_fraction, sampling_steps, guidance)
    result.update(_sampling_time(result["flops_per_video"], seconds, rate))
    samples = steps * global_batch if steps is not None else dataset_size * epochs
    result.update(_training_cost(result, samples, training_flops, rate, num_gpus))
    mem = MemoryModel.from_model(model, latent, text_len)
    result["params"] = mem.num_params * model_scale
    result["memory_per_gpu"] = memory_per_gpu(mem, result["tokens"], micro_batch, num_gpus, sp_size,
                                              checkpoint_fraction)
    if buckets is not None:
        result["buckets"] = bucket_memory(read_buckets(buckets), mem, model.patch_size, compression, num_gpus, sp_size,
                                          checkpoint_fraction, strategy, PEAKS[gpu]["memory_gb"])
    if print_report:
        print(format_report(result, model=model, gpu=gpu, dtype=dtype, mfu=mfu, num_gpus=num_gpus, sp_size=sp_size,
                            convention=convention, sampling_steps=sampling_steps, guidance=guidance,
                            micro_batch=micro_batch, scale=(model_scale, linear_frames),
                            checkpoint_fraction=checkpoint_fraction))
        if "buckets" in result:
            print(format_buckets(result["buckets"], strategy=strategy, gpu=gpu))
    return result


def _picker(from_recipe: dict[str, Any]):
    """``pick(value, key, default)``: a flag's value, else the recipe's, else the default."""

    def pick(value, key, default):
        return value if value is not None else from_recipe.get(key, default)

    return pick


def _latent(clip: tuple[int, int, int], compression: tuple[int, int], causal: bool = False) -> tuple[int, int, int]:
    """Latent ``(T, H, W)`` of a pixel clip ``(frames, height, width)`` under (temporal, spatial)
    compression; a ``causal`` compressor keeps the first frame alone (``1 + (frames - 1) / temporal``)."""
    (frames, height, width), (tc, sc) = clip, compression
    coded = frames - 1 if causal else frames
    if coded % tc or height % sc or width % sc:
        rule = f"frames - 1 divisible by {tc} (causal)" if causal else f"frames divisible by {tc}"
        raise ValueError(f"clip {frames}×{height}×{width} does not fit the compression ({tc}, {sc}, {sc}): "
                         f"needs {rule} and height, width divisible by {sc}")
    return coded // tc + int(causal), height // sc, width // sc


def _preset_backbone(name: str, recipe: Optional[str], flags: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """A published configuration built on ``meta`` at its real size, and its source's clip
    defaults (:data:`PRESET_CLIPS`, its sampler's size and step count) in a recipe's place."""
    from lvdm.models.presets import from_name

    given = sorted(key for key, value in flags.items() if value is not None)
    if recipe or given:
        raise ValueError(f"--preset {name} fixes the architecture: drop " + ("--recipe" if recipe else
                         ", ".join(f"--{key}" for key in given)))
    found = from_name(name)
    with torch.device("meta"):
        model = found.build()
    defaults = dict(PRESET_CLIPS.get(name, {}))
    if found.sampler.size is not None:
        defaults.update(zip(("frames", "height", "width"), found.sampler.size))
    steps = found.sampler.objective[1].get("num_sampling_steps")
    if steps is not None:
        defaults["sampling_steps"] = steps
    return model, defaults


def _flop_costs(model: nn.Module, latent: tuple[int, int, int], text_len: int, scale: float,
                checkpoint_fraction: float, sampling_steps: int, guidance: bool) -> dict[str, Any]:
    """Tokens and FLOPs of one training sample, one sampling step and one video (× ``scale``)."""
    grid = patch_grid(model.patch_size, latent)
    fwd = dit_forward_flops(model, latent, text_len)
    per_step = sampling_flops(model, latent, text_len, num_steps=1, guidance=guidance) * scale
    return {
        "latent": latent,
        "grid": grid,
        "tokens": math.prod(grid),
        "text_len": text_len,
        "forward_flops_per_sample": fwd.total * scale,
        "training_flops_per_sample": dit_training_flops(model, latent, text_len) * scale,
        "training_flops_per_sample_with_recompute":
            dit_training_flops(model, latent, text_len, checkpoint_fraction=checkpoint_fraction) * scale,
        "flops_per_sampling_step": per_step,
        "flops_per_video": per_step * sampling_steps,
        "breakdown": fwd,
    }


def _sampling_time(flops_per_video: float, seconds: float, rate: float) -> dict[str, float]:
    """GPU-seconds per video and minutes of video per GPU-hour at ``rate`` FLOP/s."""
    gpu_seconds = flops_per_video / rate
    return {"video_seconds": seconds, "gpu_seconds_per_video": gpu_seconds,
            "video_minutes_per_gpu_hour": (seconds / 60) * 3600 / gpu_seconds}


def _training_cost(costs: dict[str, Any], samples: float, training_flops: Optional[float], rate: float,
                   num_gpus: int) -> dict[str, float]:
    """Training FLOPs, GPU time and the video count after which sampling has cost more."""
    computed = samples * costs["training_flops_per_sample"]
    total = training_flops if training_flops is not None else computed
    gpu_seconds = (samples * costs["training_flops_per_sample_with_recompute"] if training_flops is None
                   else total) / rate
    crossover = total / costs["flops_per_video"] if costs["flops_per_video"] else math.inf
    return {
        "training_samples": samples,
        "training_flops": total,
        "computed_training_flops": computed,
        "training_gpu_hours": gpu_seconds / 3600,
        "training_gpu_months": gpu_seconds / SECONDS_PER_MONTH,
        "training_days": gpu_seconds / max(num_gpus, 1) / 86400,
        "crossover_videos": crossover,
        "crossover_video_minutes": crossover * costs["video_seconds"] / 60,
    }


def read_buckets(path: str):
    """The :class:`~lvdm.data.buckets.BucketConfig` in a YAML file: a bucket config itself, or a
    recipe / fragment that holds one under ``data.init_args.buckets``."""
    import yaml

    from lvdm.data.buckets import BucketConfig

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"bucket config {path!r} does not exist")
    cfg = yaml.safe_load(p.read_text()) or {}
    node = cfg if "class_path" in cfg else (((cfg.get("data") or {}).get("init_args") or {}).get("buckets"))
    if not isinstance(node, dict) or not str(node.get("class_path", "")).endswith("BucketConfig"):
        raise ValueError(f"{path!r} holds no bucket config (class_path: lvdm.data.buckets.BucketConfig, at the "
                         f"top or under data.init_args.buckets)")
    return BucketConfig(**(node.get("init_args") or {}))


def bucket_memory(config, mem: MemoryModel, patch_size: tuple[int, int, int], compression: tuple[int, int],
                  num_gpus: int, sp_size: int, checkpoint_fraction: float, strategy: str,
                  memory_gb: float) -> list[dict[str, Any]]:
    """Per bucket of ``config``: its latent token count and estimated memory per GPU under
    ``strategy`` at its own batch size (activations per token as ``mem`` counted them), and
    whether that fits in ``memory_gb``.

    Latent frames are ``ceil(frames / temporal compression)`` (a causal VAE's ``1 + k``) padded
    to whole temporal patches, as the DiT pads an image; the tokens divide by ``sp_size``."""
    tc, sc = compression
    pt, ph, pw = patch_size
    rows = []
    for bucket in config.buckets():
        latent_t = math.ceil(bucket.num_frames / tc)
        h, w = bucket.height // sc, bucket.width // sc
        tokens = math.ceil(latent_t / pt) * (h // ph) * (w // pw)
        memory = memory_per_gpu(mem, tokens, bucket.batch_size, num_gpus, sp_size, checkpoint_fraction)[strategy]
        rows.append({"bucket": bucket.name, "shape": bucket.shape, "batch_size": bucket.batch_size,
                     "tokens": tokens, "states": memory["states"], "activations": memory["activations"],
                     "total": memory["total"], "fits": memory["total"] <= memory_gb * 1e9})
    return rows


def format_buckets(rows: list[dict[str, Any]], *, strategy: str, gpu: str) -> str:
    """The per-bucket memory table of :func:`estimate` (``--buckets``)."""
    lines = ["", f"memory per GPU by bucket ({strategy}, GB; {PEAKS[gpu]['memory_gb']} GB on {gpu})",
             f"  {'bucket':<24} {'batch':>5} {'tokens':>8} {'activations':>12} {'total':>9}  fits"]
    for r in rows:
        lines.append(f"  {r['bucket']:<24} {r['batch_size']:>5} {r['tokens']:>8} {r['activations'] / 1e9:>12.1f} "
                     f"{r['total'] / 1e9:>9.1f}  {'yes' if r['fits'] else 'NO: lower its batch size'}")
    too_big = [r["bucket"] for r in rows if not r["fits"]]
    lines.append(f"  {len(too_big)} of {len(rows)} buckets do not fit" + (f": {', '.join(too_big)}" if too_big else ""))
    return "\n".join(lines)


def _si(x: float) -> str:
    if x == 0:
        return "0"
    exp = int(math.floor(math.log10(abs(x))))
    return f"{x / 10**exp:.3f}e{exp:+03d}"


def format_report(r: dict[str, Any], *, model: nn.Module, gpu: str, dtype: str, mfu: float, num_gpus: int,
                  sp_size: int, convention: str, sampling_steps: int, guidance: bool, micro_batch: int,
                  scale: tuple[float, int], checkpoint_fraction: float) -> str:
    """The human-readable report of :func:`estimate`."""
    word = "FLOPs" if convention == "flops" else "MACs (DiT-paper 'FLOPs')"
    lines = [
        f"model        {describe(model, len(block_units(model)))}"
        + (f"  × model_scale {scale[0]:g}" if scale[0] != 1 else ""),
        f"parameters   {r['params'] / 1e6:,.1f} M",
        f"latent       {r['latent']} → {r['grid']} = {r['tokens']} tokens, text {r['text_len']} tokens"
        + (f"  × linear_frames {scale[1]}" if scale[1] != 1 else ""),
        f"counting     {word}",
        "",
        f"forward / sample            {_si(r['forward_flops_per_sample'])}",
        f"training / sample (3× fwd)  {_si(r['training_flops_per_sample'])}"
        + (f"  ({_si(r['training_flops_per_sample_with_recompute'])} with checkpointing recompute)"
           if checkpoint_fraction else ""),
        f"sampling step ({'CFG, 2 forwards' if guidance else 'no CFG'})  {_si(r['flops_per_sampling_step'])}",
        f"generated video ({sampling_steps} steps, {r['video_seconds']:.3g} s of video)  {_si(r['flops_per_video'])}",
        f"  at {100 * mfu:.0f}% of {gpu} {dtype} peak: {r['gpu_seconds_per_video']:,.1f} GPU-s per video, "
        f"{r['video_minutes_per_gpu_hour']:.2f} min of video per GPU-hour",
    ]
    if r["training_flops"]:
        lines += [
            "",
            (f"training     {_si(r['training_flops'])} FLOPs in total (given)" if r["training_flops"] != r["computed_training_flops"]
             else f"training     {r['training_samples']:,.0f} samples, {_si(r['training_flops'])} total")
            + (f", activation checkpointing {checkpoint_fraction:.0%} (+recompute)" if checkpoint_fraction else ""),
            f"  {r['training_gpu_hours']:,.{0 if r['training_gpu_hours'] > 100 else 3}f} {gpu}-hours = {r['training_gpu_months']:,.1f} GPU-months "
            f"= {r['training_days']:,.1f} days on {num_gpus} GPUs at {100 * mfu:.0f}% MFU",
            f"  inference overtakes training after {r['crossover_videos']:,.0f} videos "
            f"({r['crossover_video_minutes'] / 1e6:,.2f} M minutes of video)",
        ]
    lines += ["", f"memory per GPU (GB; {num_gpus} GPUs, SP {sp_size}, micro-batch {micro_batch}, "
                  f"checkpointing {checkpoint_fraction:.0%}; {PEAKS[gpu]['memory_gb']} GB on {gpu})"
              + (f"\n  of the model above before model_scale (which scales FLOPs and parameters only; "
                 f"a {scale[0]:g}x model needs a real configuration to size its memory)" if scale[0] != 1 else ""),
              f"  {'strategy':<14} {'states':>9} {'activations':>12} {'total':>9}"]
    for name, m in r["memory_per_gpu"].items():
        lines.append(f"  {name:<14} {m['states'] / 1e9:>9.1f} {m['activations'] / 1e9:>12.1f} {m['total'] / 1e9:>9.1f}")
    return "\n".join(lines)
