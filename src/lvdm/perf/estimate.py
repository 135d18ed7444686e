"""``lvdm estimate``: parameters, FLOPs, GPU-hours, seconds per video and memory per GPU of a
DiT configuration, before anything is trained.

Memory model (per GPU, bytes; ``P`` parameters, ``N`` data-parallel GPUs; mixed precision
with fp32 master weights and AdamW, the 16 bytes/parameter of the ZeRO paper):

* DDP: ``16·P`` (fp32 weights 4 + fp32 gradients 4 + Adam moments 8) + ``2·P`` bf16 weight copies.
* ZeRO-2: ``2·P`` bf16 weights + ``(2 + 12)·P / N`` (gradients and fp32 weights+moments sharded).
* ZeRO-3: ``16·P / N`` + the largest gathered block in bf16.
* ZeRO-3 + CPU offload: only the gathered block stays on the GPU (``16·P / N`` in host memory).

Activations (bf16, 2 bytes) are counted per video token per block in units of the hidden size
``D``: each self-attention branch keeps its norm input, modulated input, q/k/v, attention
output and projection output (7·D); cross-attention its norm input, query and output (3·D);
the MLP its norm input, modulated input, both hidden activations and output (3·D + 2·r·D for
MLP ratio ``r``). Flash/SDPA attention stores no score matrix. Activation checkpointing keeps
only each checkpointed block's input (1·D) plus one block's activations while it is
recomputed. Sequence parallelism splits the tokens, so activations divide by the SP size.
These are estimates (allocator fragmentation, temporary buffers and the text encoder are not
counted): the benchmark's measured peak memory is the check.

With ``--buckets`` (a bucket config, or a recipe or fragment that holds one under
``data.init_args.buckets``) the memory of every bucket — its clip shape at its own batch size
— is estimated under ``--strategy``, and buckets whose estimate exceeds the GPU's memory are
flagged before anything is launched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional

from lvdm.perf.step_flops import DiTShape, dit_forward_flops, dit_training_flops, sampling_flops
from lvdm.perf.hardware import PEAKS

SECONDS_PER_MONTH = 30 * 24 * 3600


def _read_recipe(path: str) -> dict[str, Any]:
    """Pull the numbers an estimate needs out of an ``lvdm fit`` recipe."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"recipe {path!r} does not exist")
    cfg = yaml.safe_load(p.read_text()) or {}
    try:
        module = cfg["model"]["init_args"]
        dit = dict(module["denoiser"]["init_args"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"recipe {path!r} has no model.init_args.denoiser.init_args ({err})") from None
    class_path = str(module["denoiser"].get("class_path", ""))
    if class_path.rsplit(".", 1)[-1] != "DiT":
        # the FLOP model is any backbone's (lvdm.models.contract), but the memory model and the
        # report are written for DiT's dimensions
        raise ValueError(f"recipe {path!r}: lvdm estimate models a DiT denoiser, this one is {class_path!r}; "
                         "its FLOPs are in lvdm.perf.step_flops.dit_forward_flops(model, ...) and in the "
                         "ThroughputMonitor callback")
    out: dict[str, Any] = {"dit": dit}
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
    data = (cfg.get("data") or {}).get("init_args") or {}
    if "batch_size" in data:
        out["micro_batch"] = int(data["batch_size"])
    for key in ("num_frames",):
        if key in data:
            out["frames"] = int(data[key])
    if "resolution" in data:
        out["height"] = out["width"] = int(data["resolution"])
    trainer = cfg.get("trainer") or {}
    if trainer.get("max_steps", -1) and int(trainer.get("max_steps", -1)) > 0:
        out["steps"] = int(trainer["max_steps"])
    return out


def activation_bytes_per_token_block(shape: DiTShape, bytes_per_value: int = 2) -> int:
    """Stored activations of one block per video token (see the module docstring)."""
    n_attn = 1 if shape.layout == "full" else 2
    units = 7 * n_attn + (3 if shape.conditioning == "cross_attn" else 0) + 3 + 2 * shape.mlp_hidden / shape.hidden_size
    return int(units * shape.hidden_size * bytes_per_value)


def memory_per_gpu(
    shape: DiTShape,
    tokens_per_sample: int,
    micro_batch: int,
    num_gpus: int,
    sp_size: int = 1,
    checkpoint_fraction: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Bytes per GPU of model states and activations under DDP / ZeRO-2 / ZeRO-3 / ZeRO-3+offload.

    Args:
        shape: the DiT.
        tokens_per_sample: video tokens of one sample.
        micro_batch: samples per GPU per step (per SP group).
        num_gpus: GPUs the states are sharded over (data-parallel × SP ranks).
        sp_size: sequence-parallel group size (tokens split across it).
        checkpoint_fraction: share of blocks with activation checkpointing.
    """
    p = shape.num_params
    n = max(num_gpus, 1)
    block_params = shape.block_params
    per_tok_block = activation_bytes_per_token_block(shape)
    tokens = micro_batch * tokens_per_sample / sp_size
    full = shape.depth * (1 - checkpoint_fraction) * per_tok_block * tokens
    kept = shape.depth * checkpoint_fraction * shape.hidden_size * 2 * tokens
    recompute = per_tok_block * tokens if checkpoint_fraction > 0 else 0
    act = full + kept + recompute
    states = {
        "ddp": 16 * p + 2 * p,
        "zero2": 2 * p + 14 * p / n,
        "zero3": 16 * p / n + 2 * block_params,
        "zero3_offload": 2 * block_params,
    }
    return {k: {"states": v, "activations": act, "total": v + act} for k, v in states.items()}


def _model_shape(from_recipe: dict[str, Any], has_recipe: bool, **flags: Any) -> DiTShape:
    """The DiT to estimate: the recipe's, overridden by the flags that are given; without a
    recipe, an Open-Sora STDiT (text width 4096) unless the flags say otherwise."""
    dit_kwargs: dict[str, Any] = dict(from_recipe.get("dit", {}))
    if not dit_kwargs and flags["size"] is None:
        flags["size"] = "XL/2"
    dit_kwargs.update({key: value for key, value in flags.items() if value is not None})
    if not has_recipe:
        dit_kwargs.setdefault("conditioning", "cross_attn")
        dit_kwargs.setdefault("layout", "spatial_temporal")
        dit_kwargs.setdefault("context_dim", 0 if dit_kwargs.get("num_classes") else 4096)
    if dit_kwargs.get("num_classes") and dit_kwargs.get("context_dim"):
        raise ValueError("give either --num_classes or --context_dim (a text model), not both")
    return DiTShape.from_kwargs(**dit_kwargs)


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
    """Estimate the cost of training and sampling a DiT: parameters, FLOPs per training sample
    and per generated video, training GPU-hours, seconds per video, memory per GPU.

    Flags override the recipe; what neither gives takes the defaults of an Open-Sora STDiT-XL/2
    at 16×256×256 (4-channel SD-VAE latents, 8× spatial, 120 T5 tokens).

    Args:
        recipe: an ``lvdm fit`` YAML recipe to read the model, clip size, text length,
            sampling steps and batch from.
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
    from_recipe = _read_recipe(recipe) if recipe else {}
    shape = _model_shape(from_recipe, bool(recipe), size=size, conditioning=conditioning, layout=layout,
                         in_channels=in_channels, context_dim=context_dim, num_classes=num_classes,
                         adaln_single=adaln_single)

    def pick(value, key, default):
        return value if value is not None else from_recipe.get(key, default)

    frames = pick(frames, "frames", 16)
    height = pick(height, "height", 256)
    width = pick(width, "width", 256)
    tc = pick(temporal_compression, "temporal_compression", 1)
    sc = pick(spatial_compression, "spatial_compression", 8)
    text_len = pick(text_len, "text_len", 120) if shape.context_dim else 0
    sampling_steps = pick(sampling_steps, "sampling_steps", 50)
    guidance = pick(guidance, "guidance", True)
    steps = pick(steps, "steps", None) if dataset_size == 0 else steps
    peak = _peak_flops(gpu, dtype, mfu)
    if frames % tc or height % sc or width % sc:
        raise ValueError(f"clip {frames}×{height}×{width} is not divisible by the compression ({tc}, {sc}, {sc})")
    latent = (frames // tc, height // sc, width // sc)
    grid = shape.latent_grid(latent)
    n_tokens = grid[0] * grid[1] * grid[2]
    unit = 1.0 if convention == "flops" else 0.5
    scale = model_scale * linear_frames * unit

    fwd = dit_forward_flops(shape, latent, text_len)
    fwd_sample = fwd.total * scale
    train_sample = dit_training_flops(shape, latent, text_len, checkpoint_fraction=0.0) * scale
    train_sample_hw = dit_training_flops(shape, latent, text_len, checkpoint_fraction=checkpoint_fraction) * scale
    per_step = sampling_flops(shape, latent, text_len, num_steps=1, guidance=guidance) * scale
    per_video = per_step * sampling_steps
    seconds = video_seconds if video_seconds is not None else frames * linear_frames / fps
    gpu_seconds_per_video = per_video / (peak * mfu)
    minutes_per_gpu_hour = (seconds / 60) * 3600 / gpu_seconds_per_video

    if steps is not None:
        samples = steps * global_batch
    else:
        samples = dataset_size * epochs
    computed_train_total = samples * train_sample
    train_total = training_flops if training_flops is not None else computed_train_total
    train_gpu_seconds = samples * train_sample_hw / (peak * mfu) if training_flops is None else train_total / (peak * mfu)
    crossover_videos = train_total / per_video if per_video else math.inf
    mb = micro_batch if micro_batch is not None else from_recipe.get("micro_batch", 1)
    memory = memory_per_gpu(shape, n_tokens, mb, num_gpus, sp_size, checkpoint_fraction)

    result: dict[str, Any] = {
        "params": shape.num_params * model_scale,
        "latent": latent,
        "grid": grid,
        "tokens": n_tokens,
        "text_len": text_len,
        "forward_flops_per_sample": fwd_sample,
        "training_flops_per_sample": train_sample,
        "training_flops_per_sample_with_recompute": train_sample_hw,
        "flops_per_sampling_step": per_step,
        "flops_per_video": per_video,
        "video_seconds": seconds,
        "gpu_seconds_per_video": gpu_seconds_per_video,
        "video_minutes_per_gpu_hour": minutes_per_gpu_hour,
        "training_samples": samples,
        "training_flops": train_total,
        "computed_training_flops": computed_train_total,
        "training_gpu_hours": train_gpu_seconds / 3600,
        "training_gpu_months": train_gpu_seconds / SECONDS_PER_MONTH,
        "training_days": train_gpu_seconds / max(num_gpus, 1) / 86400,
        "crossover_videos": crossover_videos,
        "crossover_video_minutes": crossover_videos * seconds / 60,
        "memory_per_gpu": memory,
        "breakdown": fwd,
    }
    if buckets is not None:
        result["buckets"] = bucket_memory(read_buckets(buckets), shape, (tc, sc), num_gpus, sp_size,
                                          checkpoint_fraction, strategy, PEAKS[gpu]["memory_gb"])
    if print_report:
        print(format_report(result, shape=shape, gpu=gpu, dtype=dtype, mfu=mfu, num_gpus=num_gpus, sp_size=sp_size,
                            convention=convention, sampling_steps=sampling_steps, guidance=guidance, micro_batch=mb,
                            scale=(model_scale, linear_frames), checkpoint_fraction=checkpoint_fraction))
        if "buckets" in result:
            print(format_buckets(result["buckets"], strategy=strategy, gpu=gpu))
    return result


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


def bucket_memory(config, shape: DiTShape, compression: tuple[int, int], num_gpus: int, sp_size: int,
                  checkpoint_fraction: float, strategy: str, memory_gb: float) -> list[dict[str, Any]]:
    """Per bucket of ``config``: its latent token count and estimated memory per GPU under
    ``strategy`` at its own batch size, and whether that fits in ``memory_gb``.

    Latent frames are ``ceil(frames / temporal compression)`` (a causal VAE's ``1 + k``) padded
    to whole temporal patches, as the DiT pads an image; the tokens divide by ``sp_size``."""
    tc, sc = compression
    pt, ph, pw = shape.patch_size
    rows = []
    for bucket in config.buckets():
        latent_t = math.ceil(bucket.num_frames / tc)
        h, w = bucket.height // sc, bucket.width // sc
        tokens = math.ceil(latent_t / pt) * (h // ph) * (w // pw)
        memory = memory_per_gpu(shape, tokens, bucket.batch_size, num_gpus, sp_size, checkpoint_fraction)[strategy]
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


def format_report(r: dict[str, Any], *, shape: DiTShape, gpu: str, dtype: str, mfu: float, num_gpus: int,
                  sp_size: int, convention: str, sampling_steps: int, guidance: bool, micro_batch: int,
                  scale: tuple[float, int], checkpoint_fraction: float) -> str:
    """The human-readable report of :func:`estimate`."""
    word = "FLOPs" if convention == "flops" else "MACs (DiT-paper 'FLOPs')"
    lines = [
        f"model        DiT D={shape.hidden_size} depth={shape.depth} heads={shape.num_heads} patch={shape.patch_size} "
        f"{shape.conditioning}/{shape.layout}" + (" adaLN-single" if shape.adaln_single else "")
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
