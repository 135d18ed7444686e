"""Prompts → mp4 files: what ``lvdm sample``, ``lvdm eval fvd --fake_checkpoint`` and the sample
previews call (the library does the sampling; the CLI only parses its arguments)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import torch


def slugify(text: str, max_length: int = 60) -> str:
    """A file-name-safe version of a prompt."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "_", text.strip().lower()).strip("_")
    return slug[:max_length] or "empty"


def save_videos(
    videos: torch.Tensor, prompts: Sequence[str], out_dir: str | Path, fps: float = 8, start_index: int = 0
) -> list[Path]:
    """Write ``videos`` ``[B, 3, T, H, W]`` in [-1, 1] as ``<out_dir>/<index>_<prompt>.mp4`` and
    append their prompts, in file order, to ``<out_dir>/prompts.txt`` (what ``lvdm eval
    probe`` reads)."""
    from lvdm.data.video import write_mp4

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = ((videos.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = frames.permute(0, 2, 3, 4, 1).cpu().numpy()  # [B, T, H, W, 3]
    paths = []
    with open(out_dir / "prompts.txt", "a") as f:
        for i, (clip, prompt) in enumerate(zip(frames, prompts)):
            path = out_dir / f"{start_index + i:05d}_{slugify(prompt)}.mp4"
            write_mp4(path, clip, fps=fps)
            f.write(prompt.replace("\n", " ") + "\n")
            paths.append(path)
    return paths


def clear_video_folder(folder: Path, overwrite: bool) -> None:
    """Make ``folder`` ready for a new set of videos: refuse it when it already holds mp4 files
    (or, with ``overwrite``, delete them), and drop its old ``prompts.txt``."""
    old = sorted(folder.glob("*.mp4")) if folder.is_dir() else []
    if old and not overwrite:
        raise FileExistsError(
            f"{folder} already holds {len(old)} videos (e.g. {old[0].name}); choose another --out "
            "or pass --overwrite true to delete them"
        )
    for path in old:
        path.unlink()
    (folder / "prompts.txt").unlink(missing_ok=True)


def given_size(height: Optional[int], width: Optional[int]) -> Optional[tuple[int, int]]:
    """The ``(height, width)`` given frames are resized to: ``None`` (keep their size) when
    neither is given; both must be given, and positive, otherwise."""
    if height is None and width is None:
        return None
    if height is None or width is None:
        raise ValueError("with --image or --video give --height and --width together (the given frames are "
                         "resized and centre-cropped to them), or neither to keep the frames' own size")
    if height < 1 or width < 1:
        raise ValueError(f"--height and --width must be positive, got {height} and {width}")
    return height, width


def apply_preset(module, name: str) -> str:
    """Give ``module`` the sampler defaults of preset ``name`` (:func:`lvdm.models.presets.from_name`):
    its objective (process, target convention, shift rule, sampler and steps) and guidance scale.
    Returns the preset's null-caption rule for :meth:`~lvdm.training.module.LatentDiffusionModule.generate`."""
    from lvdm.models.presets import from_name

    chosen = from_name(name)
    backbone = type(module.denoiser).__name__
    if backbone != chosen.backbone:
        raise ValueError(f"--preset {name} is a {chosen.backbone}; the checkpoint's denoiser is a {backbone}")
    module.objective = chosen.sampler.build_objective()
    module.guidance_scale = chosen.sampler.guidance_scale
    null = chosen.sampler.null_condition
    return "empty_caption" if null == "null_class" else null


def sample(
    checkpoint: str,
    prompts: Optional[list[str]] = None,
    prompt_file: Optional[str] = None,
    out: str = "samples",
    num_frames: Optional[int] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    steps: Optional[int] = None,
    guidance: Optional[float] = None,
    seed: int = 0,
    batch_size: int = 16,
    use_ema: bool = True,
    fps: Optional[float] = None,
    device: str = "auto",
    image: Optional[str] = None,
    video: Optional[str] = None,
    extend: int = 0,
    context_frames: Optional[int] = None,
    loop: bool = False,
    overwrite: bool = False,
    preset: Optional[str] = None,
    class_label: Optional[list[int]] = None,
) -> list[str]:
    """Generate one mp4 per prompt from a trained checkpoint; image-to-video with ``--image``,
    continuation with ``--video start.mp4 --extend N``.

    Videos are written as ``<out>/<index>_<prompt>.mp4`` with the prompts, in file order, in
    ``<out>/prompts.txt``. The noise of prompt ``i`` depends only on ``seed + i``. Given frames
    (``--image``, ``--video``) need a model trained with ``frame_masks``.

    Args:
        checkpoint: a ``.ckpt`` written by ``lvdm fit`` (the model is rebuilt from its recipe),
            a DeepSpeed checkpoint directory, or a ``.safetensors`` file from ``lvdm checkpoint
            export`` (which already holds the weights it was exported with; ``use_ema`` does not apply).
        prompts: prompts to render, e.g. '["a red square moving left"]'.
        prompt_file: a text file with one prompt per line (added after ``prompts``); ``-`` reads
            standard input.
        out: output folder.
        num_frames: frames per video (default: the model's sample_shape).
        height: video height in pixels (default: the model's sample_shape; with ``image`` or
            ``video``: the given frames' height). With ``image``/``video``, give ``height`` and
            ``width`` together: the given frames are resized so their shorter side covers the
            size and centre-cropped to it, as training clips are.
        width: video width in pixels (default: the model's sample_shape; with ``image`` or
            ``video``: the given frames' width).
        steps: sampler steps (default: the objective's).
        guidance: classifier-free guidance scale (default: the model's; 1 disables it).
        seed: base noise seed.
        batch_size: prompts generated together.
        use_ema: use the EMA weights stored in the checkpoint, when there are any.
        fps: frame rate of the mp4 files (default: the model's ``fps``, the rate of its training clips).
        device: ``cpu``, ``cuda``, ``cuda:1``… or ``auto`` (a GPU when there is one).
        image: image-to-video: an image file, the first frame of every video, or a folder of
            images, one per prompt in name order; the video has the image's size unless
            ``height`` and ``width`` are given.
        video: a video file to continue (the same start for every prompt); needs ``extend``.
        extend: with ``video``: frames to add; the written videos hold the given frames first.
        context_frames: with ``video``: given frames per generated window (default: half of
            ``num_frames``).
        loop: with ``image``: the video also ends on the image (a seamless loop).
        overwrite: delete the videos already in ``out`` first; without it a folder that holds
            videos is refused (``lvdm eval`` would score the old ones with the new).
        preset: sample the way the published model does (``lvdm.models.presets.TABLE``, e.g.
            ``opensora-v1.2-stdit3-xl2``): its objective and target convention, shift rule,
            steps, guidance scale and null caption replace the checkpoint's (``steps`` and
            ``guidance`` still win). Give it for a checkpoint holding a published model's
            weights, not for one trained under lvdm's own objective.
        class_label: class-conditional models (ImageNet DiT): one video per label, e.g.
            '[207, 360]', instead of prompts.
    """
    from tqdm.auto import tqdm

    from lvdm.checkpoints.load import load_module
    from lvdm.utils import read_prompt_file, resolve_device

    all_prompts = list(prompts or [])
    if prompt_file:
        all_prompts += read_prompt_file(prompt_file)
    if class_label and all_prompts:
        raise ValueError("give --class_label (a class-conditional model) or prompts, not both")
    if class_label and (image or video):
        raise ValueError("--class_label samples a class-conditional model from noise; --image / --video are not supported")
    if class_label:
        all_prompts = [f"class {label}" for label in class_label]
    if not all_prompts:
        raise ValueError("no prompts: give --prompts and/or --prompt_file (or --class_label)")
    if image and video:
        raise ValueError("give --image (image-to-video) or --video (continuation), not both")
    if video and extend < 1:
        raise ValueError("--video needs --extend N: the number of frames to add")
    if extend and not video:
        raise ValueError("--extend continues a video: give it with --video start.mp4")
    if loop and not image:
        raise ValueError("--loop makes a video that starts and ends on an image: give it with --image")
    from lvdm.data.given import read_images, read_video

    size = given_size(height, width) if image or video else None
    first = read_images(image, len(all_prompts), size) if image else None
    start_clip = read_video(video, size)[None] if video else None
    if size is None and (image or video):
        h, w = (first if first is not None else start_clip).shape[-2:]
        print(f"the videos are {h}x{w} (height x width), the size of the given frames; "
              "--height and --width resize them")
    out_dir = Path(out)
    clear_video_folder(out_dir, overwrite)
    loaded = load_module(checkpoint, weights="auto" if use_ema else "raw", map_location=resolve_device(device))
    module = loaded.module.eval()
    null_caption = apply_preset(module, preset) if preset else "empty_caption"
    fps = fps or getattr(module, "fps", 8.0)
    print(f"sampling with {loaded.describe()}; writing {fps:g} fps")
    written: list[str] = []
    for start in tqdm(range(0, len(all_prompts), batch_size), desc="generating", unit="batch"):
        chunk = all_prompts[start : start + batch_size]
        if start_clip is not None:
            videos = module.extend(start_clip.expand(len(chunk), -1, -1, -1, -1), chunk, extend, context_frames,
                                   num_frames, num_steps=steps, guidance_scale=guidance, seed=seed + start)
        else:
            videos = module.generate(
                chunk, num_frames, height, width, num_steps=steps, guidance_scale=guidance, seed=seed + start,
                first_frames=None if first is None else first[start : start + batch_size], loop=loop,
                class_labels=class_label[start : start + batch_size] if class_label else None,
                null_caption=null_caption,
            )
        written += [str(p) for p in save_videos(videos, chunk, out_dir, fps=fps, start_index=start)]
    print(f"wrote {len(written)} videos to {out_dir}/")
    return written
