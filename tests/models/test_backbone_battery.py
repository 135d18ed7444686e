"""One battery of checks that every backbone and variant runs (diffusers' ``ModelTesterMixin``
is the model): the backbone contract (:mod:`lvdm.models.contract`), published parameter counts
on ``meta``, save/load, identity at init, per-frame timesteps, sequence parallelism (Ulysses
and ring on 2 gloo processes) against one process, activation checkpointing, the FLOP model
against ``torch.utils.flop_counter`` and clear errors for bad input.

A new backbone is added to ``VARIANTS`` (and, with a published size, to ``PUBLISHED``).
"""

from __future__ import annotations

import inspect
import json
import re
import socket
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lvdm.distributed.parallelize import parallelize
from lvdm.distributed.sequence_parallel import SequenceParallelGroup, new_sequence_parallel_group
from lvdm.models.contract import Backbone, image_condition_kwargs
from lvdm.models.dit import DiT
from lvdm.models.mmdit import MMDiT
from lvdm.models.parallel_plan import SequenceSplit
from lvdm.models.presets import from_name, preset
from lvdm.models.stdit import STDiT
from lvdm.ops.attention import sequence_parallel
from lvdm.perf.step_flops import meta_forward_flops

CONTEXT_DIM, TEXT_LEN, FRAMES = 8, 5, 4


def _dit(**kw) -> DiT:
    return DiT(in_channels=2, hidden_size=24, depth=2, num_heads=2, patch_size=(1, 2, 2), context_dim=CONTEXT_DIM, **kw)


def _stdit(**kw) -> STDiT:
    return STDiT(in_channels=2, hidden_size=24, depth=2, num_heads=2, patch_size=(1, 2, 2), context_dim=CONTEXT_DIM,
                 context_length=3, base_size=2, **kw)


def _mmdit(**kw) -> MMDiT:
    return MMDiT(**{**dict(in_channels=2, hidden_size=24, num_heads=2, depth_double=2, depth_single=2,
                           context_dim=CONTEXT_DIM, refiner_depth=1, rope_axes_dims=(4, 4, 4)), **kw})


def _wan(**kw) -> nn.Module:
    """diffusers' WanTransformer3DModel behind lvdm's adapter (imports diffusers only when built)."""
    from lvdm.models.diffusers_adapter import build_wan

    return build_wan(**{**dict(in_channels=2, out_channels=2, num_attention_heads=2, attention_head_dim=12,
                               text_dim=CONTEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
                               text_length=TEXT_LEN + 2), **kw})


def _wan_i2v(**kw) -> nn.Module:
    """Wan 2.1 I2V's shape: mask (4) and first-frame latent (2) channels after the noisy ones, CLIP
    tokens (zeros when not given), the caption padded to 512 (where diffusers cuts the image tokens)."""
    return _wan(in_channels=8, image_dim=6, added_kv_proj_dim=24, image_length=3, text_length=512, **kw)


def _wan_experts(**kw) -> nn.Module:
    """Wan 2.2's two noise-level experts: the battery's float64 batch (t = 9, 300: the LoRA and SP cases)
    has one sample on each side of 100, its float32 batch (t = 788, 807) goes to the high-noise expert."""
    from lvdm.models.diffusers_adapter import WanExperts

    return WanExperts(_wan(**kw), _wan(**kw), boundary_ratio=0.1)


def _cogvideox(**kw) -> nn.Module:
    """diffusers' CogVideoXTransformer3DModel (5b's RoPE positions) behind lvdm's adapter."""
    from lvdm.models.diffusers_adapter import build_cogvideox

    return build_cogvideox(**{**dict(in_channels=2, out_channels=2, num_attention_heads=2, attention_head_dim=16,
                                     time_embed_dim=8, text_embed_dim=CONTEXT_DIM, num_layers=2, sample_width=4,
                                     sample_height=4, max_text_seq_length=TEXT_LEN,
                                     use_rotary_positional_embeddings=True), **kw})


def _hunyuanvideo(**kw) -> nn.Module:
    """diffusers' HunyuanVideoTransformer3DModel behind lvdm's adapter (pooled text zeros, guidance 6)."""
    from lvdm.models.diffusers_adapter import build_hunyuanvideo

    return build_hunyuanvideo(**{**dict(in_channels=2, out_channels=2, num_attention_heads=2, attention_head_dim=12,
                                        num_layers=1, num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0,
                                        text_embed_dim=CONTEXT_DIM, pooled_projection_dim=6,
                                        rope_axes_dim=(4, 4, 4)), **kw})


def _mochi(**kw) -> nn.Module:
    """diffusers' MochiTransformer3DModel (asymmetric text stream) behind lvdm's adapter."""
    from lvdm.models.diffusers_adapter import build_mochi

    return build_mochi(**{**dict(patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                                 pooled_projection_dim=12, in_channels=2, text_embed_dim=CONTEXT_DIM,
                                 time_embed_dim=8), **kw})


def _ltx(**kw) -> nn.Module:
    """diffusers' LTXVideoTransformer3DModel behind lvdm's adapter (imports diffusers only when built)."""
    from lvdm.models.diffusers_adapter import build_ltx

    return build_ltx(**{**dict(in_channels=2, out_channels=2, num_attention_heads=2, attention_head_dim=12,
                               num_layers=2, caption_channels=CONTEXT_DIM), **kw})


@dataclass(frozen=True)
class Variant:
    name: str
    build: Callable[[], nn.Module]
    sequence_parallel: bool = True  #: declares a plan that serves this configuration
    per_frame: bool = True  #: takes per-frame timesteps
    identity_blocks: bool = True  #: every block is the identity at init
    #: relative SP(2)-vs-1 tolerance in float64; diffusers' Wan computes its norms, modulations and
    #: residual sums in float32 whatever the model's dtype (``.float()``), so the gradients of
    #: shared weights, summed over other token splits, differ at float32 rounding (~1e-7)
    sp_tolerance: float = 1e-10
    #: patches larger than one latent voxel (with patch 1 every size is whole patches: nothing is padded)
    patch_padding: bool = True
    #: its SP(2) cases run with ``-m slow`` (a variant whose sharded path another variant already runs)
    sp_slow: bool = False


VARIANTS = [
    Variant("dit-full-adaln", lambda: _dit(conditioning="adaln")),
    Variant("dit-full-cross", lambda: _dit(conditioning="cross_attn")),
    Variant("dit-full-cross-single", lambda: _dit(conditioning="cross_attn", adaln_single=True)),
    Variant("dit-st-cross-single",
            lambda: _dit(conditioning="cross_attn", layout="spatial_temporal", adaln_single=True)),
    Variant("dit-in-context", lambda: _dit(conditioning="in_context"), sequence_parallel=False, per_frame=False),
    Variant("pixart-alpha", lambda: _stdit(temporal="none", temporal_position="none", size_conditioning=True)),
    Variant("opensora-1.0-stdit", lambda: _stdit(temporal="inline", temporal_position="sincos_branch")),
    Variant("opensora-1.2-stdit3", lambda: _stdit(temporal="blocks", temporal_position="rope", qk_norm=True,
                                                  fps_conditioning=True)),
    # Latte adds its frame code to the token stream: temporal block 0's input changes, by design
    Variant("latte", lambda: _stdit(temporal="blocks", temporal_cross_attention=False,
                                    temporal_position="sincos_stream"), identity_blocks=False),
    Variant("stdit-rope-3d", lambda: _stdit(temporal="blocks", temporal_position="none", position="rope_3d")),
    Variant("mmdit-hunyuanvideo", lambda: _mmdit(pooled_text_dim=6)),
    Variant("mmdit-no-guidance-no-pooled", lambda: _mmdit(pooled_text_dim=0, guidance_embed=False)),
    Variant("mmdit-opensora-2.0", lambda: _mmdit(pooled_text_dim=6, guidance_embed=False, refiner_depth=0,
                                                 text_mask=False, image_condition_channels=3, rope_theta=10000.0)),
    # diffusers' Wan 2.1 T2V transformer through lvdm.models.diffusers_adapter (lvdm's SP hooks)
    Variant("wan2.1-t2v-diffusers", _wan, sp_tolerance=1e-6),
    # its image embedder's FP32LayerNorms round at float32 too (gradients measured 1.1e-6 apart)
    Variant("wan2.1-i2v-diffusers", _wan_i2v, sp_tolerance=3e-6, sp_slow=True),
    # its SP cases run by default: the experts are a container plan (lvdm.distributed.plan skips it)
    Variant("wan2.2-experts-diffusers", _wan_experts, sp_tolerance=1e-6),
    # diffusers' CogVideoX transformer: one time embedding per sample (no per-frame times)
    Variant("cogvideox-5b-diffusers", _cogvideox, per_frame=False),
    # diffusers' HunyuanVideo transformer (one modulation per sample; its RMSNorms compute in float32)
    Variant("hunyuanvideo-diffusers", _hunyuanvideo, per_frame=False, sp_tolerance=1e-6),
    # diffusers' Mochi transformer (one modulation per sample; its RMSNorms compute in float32)
    Variant("mochi-1-diffusers", _mochi, per_frame=False, sp_tolerance=1e-6),
    # diffusers' LTX-Video transformer (its RMSNorm also computes in float32 whatever the dtype)
    Variant("ltx-video-diffusers", _ltx, sp_tolerance=1e-6, patch_padding=False),
]
BY_NAME = {v.name: v for v in VARIANTS}
IDS = [v.name for v in VARIANTS]

#: (name, builder, published parameter count, tolerance of the published figure)
PUBLISHED = [
    ("dit-xl2-imagenet-256", lambda: DiT(size="XL/2", in_channels=4, out_channels=8, num_classes=1000), 675e6, 0.5e6),
    ("pixart-alpha-xl2-512", lambda: preset("pixart-alpha-xl2-512"), 0.6e9, 0.05e9),  # PixArt-α paper: 0.6B
    ("opensora-v1.0-stdit-xl2", lambda: preset("opensora-v1.0-stdit-xl2"), 724 * 2**20, 2 * 2**20),  # "724M"
    ("opensora-v1.2-stdit3-xl2", lambda: preset("opensora-v1.2-stdit3-xl2"), 1.1 * 2**30, 0.05 * 2**30),  # "1.1B"
    # HunyuanVideo's "13B": 12,821,012,544 in diffusers' HunyuanVideoTransformer3DModel() on meta
    ("hunyuanvideo", lambda: from_name("hunyuanvideo").build(), 12_821_012_544, 0),
    # Open-Sora 2.0's "11B": 11,891,390,528 in its own MMDiTModel (256px.py config) on meta
    ("opensora-2.0", lambda: from_name("opensora-2.0").build(), 11_891_390_528, 0),
    # Wan 2.1 T2V's "1.3B": 1,418,996,800 in diffusers' WanTransformer3DModel (the 1.3B config.json) on meta
    ("wan2.1-t2v-1.3b", lambda: from_name("wan2.1-t2v-1.3b").build(), 1_418_996_800, 0),
    # Wan 2.1's "14B": 14,288,491,584 in diffusers' WanTransformer3DModel (the 14B config) on meta; its I2V
    # (36 input channels, CLIP image tokens) 16,394,878,784; Wan 2.2 A14B two 14B experts ("27B")
    ("wan2.1-t2v-14b", lambda: from_name("wan2.1-t2v-14b").build(), 14_288_491_584, 0),
    ("wan2.1-i2v-14b-480p", lambda: from_name("wan2.1-i2v-14b-480p").build(), 16_394_878_784, 0),
    ("wan2.2-t2v-a14b", lambda: from_name("wan2.2-t2v-a14b").build(), 2 * 14_288_491_584, 0),
    # CogVideoX's "2B" / "5B": 1,693,783,872 / 5,570,283,072 in diffusers' CogVideoXTransformer3DModel on meta
    ("cogvideox-2b", lambda: from_name("cogvideox-2b").build(), 1_693_783_872, 0),
    ("cogvideox-5b", lambda: from_name("cogvideox-5b").build(), 5_570_283_072, 0),
    # HunyuanVideo through diffusers' own class behind the adapter: the same 12,821,012,544
    ("hunyuanvideo-diffusers", lambda: from_name("hunyuanvideo-diffusers").build(), 12_821_012_544, 0),
    # Mochi 1 preview's "10B": 10,027,677,744 in diffusers' MochiTransformer3DModel() on meta
    ("mochi-1-preview", lambda: from_name("mochi-1-preview").build(), 10_027_677_744, 0),
    # LTX-Video's "2B": 1,923,385,472 in diffusers' LTXVideoTransformer3DModel (the 0.9.x config.json) on meta
    ("ltx-video-2b", lambda: from_name("ltx-video-2b").build(), 1_923_385_472, 0),
]


def _random(model: nn.Module, std: float = 0.3) -> nn.Module:
    """Random weights everywhere (init zeroes the outputs, which would hide every difference)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def _inputs(batch: int = 2, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 2, FRAMES, 4, 4, generator=g, dtype=dtype)
    t = torch.rand(batch, generator=g, dtype=dtype) * 1000
    ctx = torch.randn(batch, TEXT_LEN, CONTEXT_DIM, generator=g, dtype=dtype)
    mask = torch.ones(batch, TEXT_LEN, dtype=torch.bool)
    mask[0, 3:] = False  # a padded caption
    return x, t, ctx, mask


def _grads(model: nn.Module, *inputs) -> list[torch.Tensor]:
    model.zero_grad()
    w = torch.linspace(-1, 1, inputs[0].numel(), dtype=inputs[0].dtype).view(inputs[0].shape)
    (model(*inputs) * w).sum().backward()
    # an expert no sample went to (Wan 2.2's two experts) has no gradients: zeros
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


# ------------------------------------------------------------------------------ the contract
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_meets_the_contract(variant):
    model = variant.build()
    assert isinstance(model, Backbone)
    assert isinstance(model.sequence_parallel_plan, SequenceSplit)
    assert any(isinstance(m, model.block_class) for m in model.modules()), "no checkpoint/compile unit"
    assert set(model.micro_conditions) <= set(inspect.signature(model.forward).parameters)
    targets = [n for n, m in model.named_modules() if re.fullmatch(model.lora_targets, n)]
    assert targets and all(isinstance(model.get_submodule(n), nn.Linear) for n in targets)
    assert not any(re.fullmatch(model.lora_targets, n) for n in ("context_proj.fc1", "t_embedder.mlp.0"))


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_lora_on_the_declared_targets_merges_exactly(variant, assert_close_scaled):
    """LoRA (lvdm.finetune.lora) on every backbone: only adapters train, merged == unmerged (alpha ≠ rank).
    In float64: random weights of std 0.3 amplify float32 rounding of ``W x + B A x`` against
    ``(W + B A) x`` through the blocks to ~1e-5 of the output, which would hide the algebra."""
    pytest.importorskip("peft")
    from lvdm.finetune.lora import apply_lora, is_adapter_key, lora_layers, merge_lora

    model = _random(variant.build()).double()
    apply_lora(model, rank=2, alpha=5.0)
    assert all(is_adapter_key(n) == p.requires_grad for n, p in model.named_parameters())
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(0, 0.3)
        unmerged = model.eval()(*_inputs(dtype=torch.float64))
        merged = merge_lora(model)(*_inputs(dtype=torch.float64))
    assert_close_scaled(merged, unmerged, rtol=1e-6)


@pytest.mark.parametrize("name,build,published,tolerance", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_parameter_count_on_meta(name, build, published, tolerance):
    with torch.device("meta"):
        model = build()
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - published) <= tolerance, f"{name}: {count:,} parameters, published {published:,.0f}"


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_save_and_load(variant, tmp_path):
    model = _random(variant.build()).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    fresh = variant.build().eval()
    fresh.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True), strict=True)
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, ctx, mask), model(x, t, ctx, mask), rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_identity_at_init(variant):
    """A fresh model predicts 0, and (where promised) every block returns its input."""
    torch.manual_seed(0)
    model = variant.build().eval()
    changed = []

    def hook(module, args, kwargs, output):
        # a block returns its tokens, or a tuple of streams (MMDiT: video and text tokens); diffusers'
        # LTX-Video passes its block inputs by keyword (tokens first)
        outputs = output if isinstance(output, tuple) else (output,)
        inputs = args or tuple(kwargs.values())
        if not all(torch.equal(o, a) for o, a in zip(outputs, inputs)):
            changed.append(type(module).__name__)

    for m in model.modules():
        if isinstance(m, model.block_class):
            m.register_forward_hook(hook, with_kwargs=True)
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        out = model(x, t, ctx, mask)
    assert out.shape == x.shape and not out.abs().max() > 0
    if variant.identity_blocks:
        assert not changed, f"blocks that are not the identity at init: {changed}"
    else:
        assert changed, "this variant is documented as not the identity; if it now is, say so"


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_per_frame_timesteps_equal_per_sample(variant, assert_close_scaled):
    model = _random(variant.build()).eval()
    x, t, ctx, mask = _inputs()
    per_frame = t[:, None].expand(-1, FRAMES)
    with torch.no_grad():
        if not variant.per_frame:
            with pytest.raises(ValueError, match="per-frame"):
                model(x, per_frame, ctx, mask)
            return
        assert_close_scaled(model(x, per_frame, ctx, mask), model(x, t, ctx, mask))


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_checkpointed_gradients_equal_plain(variant, assert_close_scaled):
    model = _random(variant.build(), std=0.1).train()
    inputs = _inputs()
    plain = _grads(model, *inputs)
    done = parallelize(model, ac=1.0)
    assert len(done.checkpointed) == sum(isinstance(m, model.block_class) for m in model.modules())
    for ours, ref in zip(_grads(model, *inputs), plain):
        assert_close_scaled(ours, ref)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_offloaded_checkpoint_gradients_equal_bit_for_bit(variant):
    """Checkpointing with the block inputs offloaded to the host (on the CPU: moved without a
    copy) gives the gradients of checkpointing without offload exactly, and every checkpointed
    block that ran (Wan 2.2 runs one expert's blocks a timestep) packed its inputs."""
    model = _random(variant.build(), std=0.1).train()
    inputs = _inputs()
    parallelize(model, ac=1.0)
    kept = _grads(model, *inputs)
    done = parallelize(model, ac=1.0, ac_offload=True)
    ran: list[nn.Module] = []
    for block in done.checkpointed:
        block.register_forward_pre_hook(lambda module, args: ran.append(module))
    offloaded = _grads(model, *inputs)
    packed = [block for block in done.checkpointed if block.forward.offload.tensors > 0]
    assert packed and {id(b) for b in packed} == {id(b) for b in ran}
    assert all(torch.equal(ours, ref) for ours, ref in zip(offloaded, kept))


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_flop_model_equals_flop_counter(variant):
    """The declared FLOP model (what MFU, ThroughputMonitor and `lvdm estimate` use) counts what
    torch's FlopCounterMode counts on the same forward (on meta: nothing is computed)."""
    model = variant.build()
    declared = sum(model.forward_flops((FRAMES, 4, 4), TEXT_LEN, batch_size=2).values())
    counted = meta_forward_flops(model, (2, FRAMES, 4, 4), text_len=TEXT_LEN, context_dim=CONTEXT_DIM, batch_size=2)
    assert declared == counted


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("bad,match", [
    ("channels", "channels"), ("rank", "channels"), ("timestep", r"\[2, 4\]"),
])
def test_clear_errors_for_bad_shapes(variant, bad, match):
    model = variant.build()
    x, t, ctx, mask = _inputs()
    if bad == "channels":
        x = torch.randn(2, 3, FRAMES, 4, 4)
    elif bad == "rank":
        x = x[:, :, 0]
    else:
        t = torch.rand(2, 3)
    with pytest.raises(ValueError, match=match):
        model(x, t, ctx, mask)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_odd_sizes_are_padded_to_whole_patches(variant):
    """A latent whose H and W are not multiples of the patch (Open-Sora's 240p 9:16: 30×53) is
    zero-padded at the end and the prediction cropped back (Open-Sora 1.2): in float64 it equals
    the model run on the zero-padded latent, cropped."""
    model = _random(variant.build()).double().eval()
    x, t, ctx, mask = _inputs(dtype=torch.float64)
    x = x[..., :3, :3]  # 3 × 3 latent, 2 × 2 patches
    if not variant.patch_padding:  # patch 1: nothing to pad, the odd size runs as it is
        assert tuple(model.patch_size) == (1, 1, 1) and model(x, t, ctx, mask).shape == x.shape
        return
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1))
    # micro-conditions derived from the latent size: give both runs the odd size's
    extra = {"resolution": torch.tensor([[24.0, 24.0]])} if isinstance(model, STDiT) else {}
    with torch.no_grad():
        out = model(x, t, ctx, mask, **extra)
        reference = model(padded, t, ctx, mask, **extra)[..., :3, :3]
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-10 * reference.abs().max().item())


# ------------------------------------------------------------------ sequence parallelism, 2 ranks
def _sp_cases(slow: bool) -> list[tuple[str, str]]:
    return [(v.name, mode) for v in VARIANTS if v.sequence_parallel and v.sp_slow == slow for mode in ("ulysses", "ring")]


SP_CASES = [pytest.param(name, mode, marks=[pytest.mark.slow] if slow else [], id=f"{name}-{mode}")
            for slow in (False, True) for name, mode in _sp_cases(slow)]


def _sp_case(name: str, mode: str, group, rank: int, world: int) -> dict:
    """SP(2) against the same model in one process (float64): outputs and world-averaged
    gradients. Ring runs per-frame timesteps where the variant takes them (their modulations are cut
    with the frames)."""
    model = _random(BY_NAME[name].build(), std=0.1).double()
    x, t, ctx, mask = _inputs(dtype=torch.float64)
    if mode == "ring" and BY_NAME[name].per_frame:
        t = t[:, None] * torch.linspace(1.0, 0.25, FRAMES, dtype=t.dtype)
    reference = model(x, t, ctx, mask)
    ref_grads = _grads(model, x, t, ctx, mask)
    parallelize(model, sp=world, sp_mode=mode)
    with sequence_parallel(SequenceParallelGroup(group, mode)):
        out = model(x, t, ctx, mask)
        grads = _grads(model, x, t, ctx, mask)
    grad_error = 0.0
    for g, ref in zip(grads, ref_grads):
        dist.all_reduce(g)  # what DDP does: every rank of the group computed the same loss
        # floor 1e-12: a gradient that is zero in exact arithmetic (a key bias, which softmax ignores:
        # HunyuanVideo's token refiner) is float64 rounding noise of ~1e-20 on both sides
        grad_error = max(grad_error, ((g / world - ref).abs().max() / ref.abs().max().clamp(min=1e-12)).item())
    return {"out_error": ((out - reference).abs().max() / reference.abs().max()).item(), "grad_error": grad_error,
            "scale": reference.abs().max().item()}


def _worker(rank: int, world: int, port: int, out_dir: str, slow: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {}
    try:
        group = new_sequence_parallel_group(world).group
        for name, mode in _sp_cases(slow):
            results[f"{name}-{mode}"] = _sp_case(name, mode, group, rank, world)
    except Exception:  # report, so the parent test shows what failed on which rank
        results["crash"] = traceback.format_exc()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


_RESULTS: dict[bool, list[dict]] = {False: [], True: []}


def _sp_results(tmp_path_factory, slow: bool) -> list[dict]:
    """All SP cases of the default run (or of ``-m slow``) in one spawn of 2 processes (process
    start-up dominates the cost)."""
    results = _RESULTS[slow]
    if not results:
        out = tmp_path_factory.mktemp("battery-sp")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_worker, args=(2, port, str(out), slow), nprocs=2, start_method="spawn")
        results.extend(json.loads((out / f"rank{r}.json").read_text()) for r in range(2))
    for rank, result in enumerate(results):
        assert "crash" not in result, f"rank {rank} crashed:\n{result['crash']}"
    return results


@pytest.mark.parametrize("name,mode", SP_CASES)
def test_sequence_parallel_2_equals_1(name, mode, tmp_path_factory):
    for rank, result in enumerate(_sp_results(tmp_path_factory, BY_NAME[name].sp_slow)):
        r = result[f"{name}-{mode}"]
        assert r["scale"] > 1e-3, "the reference output is ~0: the test could not fail"
        tolerance = BY_NAME[name].sp_tolerance
        assert r["out_error"] <= tolerance, f"rank {rank}: output differs by {r['out_error']:.3g} (relative)"
        assert r["grad_error"] <= tolerance, f"rank {rank}: gradient differs by {r['grad_error']:.3g} (relative)"


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_image_condition_packs_what_forward_takes(variant):
    """A backbone with image-condition channels packs the given frames into the ``image_condition``
    its forward takes (first frame given: it changes the output; none given: no keyword, its zeros);
    every other backbone gets no ``image_condition`` from the module."""
    model = _random(variant.build()).eval()
    x, t, ctx, mask = _inputs()
    given = torch.zeros(2, FRAMES, dtype=torch.bool)
    assert image_condition_kwargs(model, x, given) == {}
    given[:, 0] = True
    cond = image_condition_kwargs(model, x, given)
    if not getattr(model, "image_condition_channels", 0):
        assert cond == {}
        return
    with torch.no_grad():
        out, plain = model(x, t, ctx, mask, **cond), model(x, t, ctx, mask)
    assert (out - plain).abs().max() > 1e-4 * plain.abs().max()
