"""The one generator behind ``lvdm sample`` and ``lvdm app``: a :class:`Request` (what to make,
checked once, before anything is read or rendered), :func:`read_given` (its given frames), and
:class:`Generator` (a checkpoint loaded once, :meth:`~lvdm.training.module.LatentDiffusionModule.generate`
or :meth:`~lvdm.training.module.LatentDiffusionModule.extend`, and :func:`save_videos`)."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import InitVar, dataclass, fields
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch

from lvdm.diffusion.guidance import GuidanceSchedule
from lvdm.diffusion.step_cache import check_mode, check_threshold

MAX_SEED = 2**32 - 1


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


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_number(name: str, value, low: float, high: float, flag: str = "", unit: str = "") -> float:
    """``value`` if it is a number in ``[low, high]``; else a ValueError naming ``name`` and the limit
    (and ``--flag``, the option that sets it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number; got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {_show(low)}{unit}; got {_show(value)}{unit}")
    if value > high:
        flag = f" (--{flag})" if flag else ""
        raise ValueError(f"{name} {_show(value)}{unit} is over the limit of {_show(high)}{unit}{flag}")
    return value


def check_whole(name: str, value, low: float, high: float, flag: str = "") -> int:
    """``value`` as an int if it is a whole number in ``[low, high]`` (see :func:`check_number`)."""
    if not float(check_number(name, value, low, high, flag)).is_integer():
        raise ValueError(f"{name} must be a whole number; got {_show(value)}")
    return int(value)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; a request over any of these is refused with a message naming it.

    Args:
        max_seconds: longest video, in seconds (the frame count follows the model's fps).
        max_size: largest height and width, in pixels (an image's sides too).
        max_steps: most sampler steps.
        max_prompts: most prompt lines (videos) in one request.
        max_prompt_chars: longest prompt line, in characters.
    """

    max_seconds: float = 8.0
    max_size: int = 512
    max_steps: int = 100
    max_prompts: int = 4
    max_prompt_chars: int = 500

    def __post_init__(self):
        for field in fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"{field.name} must be positive; got {getattr(self, field.name)}")

    def describe(self) -> str:
        """The limits as the app shows them."""
        return (f"at most {self.max_prompts} prompts of {self.max_prompt_chars} characters, "
                f"{self.max_seconds:g} s, {self.max_size} pixels a side, {self.max_steps} steps")


@dataclass
class Request:
    """What to generate: one video per prompt (or per class label), checked when it is made —
    the one place the rules of a request are written, for ``lvdm sample`` and the app alike.

    Numbers left ``None`` take the model's defaults, except under ``limits`` (the app's), where
    each must be given and within them. ``image`` (a file, or a folder of one image per prompt)
    starts every video (image-to-video; ``loop`` ends it there too); ``video`` is continued by
    ``extend`` frames, ``context_frames`` given per window. Given frames are resized and
    centre-cropped to ``height`` × ``width`` when both are given, else keep their size. A
    class-conditional model takes ``class_labels`` instead of prompts. ``guidance_schedule``:
    guidance on an interval of noise levels, CFG-Zero* or APG (None: plain guidance every step).
    ``step_cache``: the step-caching threshold (:mod:`lvdm.diffusion.step_cache`; 0 or None: off;
    ``"calibrated"``: the model's calibration file's), ``step_cache_mode`` its rule (``teacache`` or ``first_block``).
    ``negative_prompt``: what the unconditional half of guidance sees instead of "" (None: the
    model's default, e.g. a preset's; "": the empty caption); a prompt line's length limit holds.
    """

    prompts: list[str]
    num_frames: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    steps: Optional[int] = None
    guidance: Optional[float] = None
    seed: int = 0
    image: Optional[str] = None
    video: Optional[str] = None
    extend: int = 0
    context_frames: Optional[int] = None
    loop: bool = False
    class_labels: Optional[list[int]] = None
    guidance_schedule: Optional[GuidanceSchedule] = None
    step_cache: Optional[float | str] = None
    negative_prompt: Optional[str] = None
    step_cache_mode: str = "teacache"
    limits: InitVar[Optional[Limits]] = None

    def __post_init__(self, limits: Optional[Limits]):
        self._check_prompts(limits)
        self._check_given()
        self._check_numbers(limits)
        if limits is not None and self.image is not None and Path(self.image).is_file():
            self._check_image_header(limits)

    def _check_prompts(self, limits: Optional[Limits]) -> None:
        self.prompts = list(self.prompts)
        if self.class_labels:
            if self.prompts:
                raise ValueError("give --class_label (a class-conditional model) or prompts, not both")
            if self.image or self.video:
                raise ValueError("--class_label samples a class-conditional model from noise; "
                                 "--image / --video are not supported")
            self.prompts = [f"class {label}" for label in self.class_labels]
        if not self.prompts:
            raise ValueError("write at least one prompt")
        if limits is not None and len(self.prompts) > limits.max_prompts:
            raise ValueError(f"{len(self.prompts)} prompt lines are over the limit of {limits.max_prompts} "
                             "(--max_prompts)")
        longest = max(len(prompt) for prompt in self.prompts)
        if limits is not None and longest > limits.max_prompt_chars:
            raise ValueError(f"a prompt of {longest} characters is over the limit of {limits.max_prompt_chars} "
                             "(--max_prompt_chars)")
        self._check_negative_prompt(limits)

    def _check_negative_prompt(self, limits: Optional[Limits]) -> None:
        negative = self.negative_prompt
        if negative is None:
            return
        if not isinstance(negative, str):
            raise ValueError(f"negative_prompt must be text; got {negative!r}")
        if self.class_labels:
            raise ValueError("--negative_prompt is a caption for text guidance; a class-conditional model "
                             "(--class_label) has none")
        if limits is not None and len(negative) > limits.max_prompt_chars:
            raise ValueError(f"a negative prompt of {len(negative)} characters is over the limit of "
                             f"{limits.max_prompt_chars} (--max_prompt_chars)")

    def _check_given(self) -> None:
        if self.image and self.video:
            raise ValueError("give --image (image-to-video) or --video (continuation), not both")
        if self.video and self.extend < 1:
            raise ValueError("--video needs --extend N: the number of frames to add")
        if self.extend and not self.video:
            raise ValueError("--extend continues a video: give it with --video start.mp4")
        if self.loop and not self.image:
            raise ValueError("a loop starts and ends on an image: give one (--image)")
        if (self.image or self.video) and (self.height is None) != (self.width is None):
            raise ValueError("with --image or --video give --height and --width together (the given frames are "
                             "resized and centre-cropped to them), or neither to keep the frames' own size")

    def _check_numbers(self, limits: Optional[Limits]) -> None:
        """Each number is whole (or finite) and in range; under ``limits`` each is given and within them."""
        bounded = limits is not None
        max_size, max_steps = (limits.max_size, limits.max_steps) if bounded else (math.inf, math.inf)
        for name in ("height", "width"):
            if getattr(self, name) is not None or bounded:
                value = check_whole(name, getattr(self, name), -math.inf, max_size, "max_size")
                if value < 1:
                    raise ValueError(f"{name} must be positive; got {value}")
                setattr(self, name, value)
        if self.num_frames is not None or bounded:
            self.num_frames = check_whole("num_frames", self.num_frames, 1, math.inf)
        if self.steps is not None or bounded:
            self.steps = check_whole("steps", self.steps, 1, max_steps, "max_steps")
        if self.guidance is not None or bounded:
            self.guidance = float(check_number("guidance", self.guidance, 0, math.inf))
        self.seed = check_whole("seed", self.seed, 0, MAX_SEED)
        self.step_cache = check_threshold(self.step_cache)
        self.step_cache_mode = check_mode(self.step_cache_mode)

    def _check_image_header(self, limits: Limits) -> None:
        """The image's sides within ``max_size``, read from its header: a huge image is refused
        before it is decoded."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.image) as img:
                width, height = img.size
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot read the image: {exc}") from None
        for name, value in (("height", height), ("width", width)):
            check_whole(f"the image's {name}", value, 1, limits.max_size, "max_size")

    @property
    def size(self) -> Optional[tuple[int, int]]:
        """The ``(height, width)`` given frames are resized to (``None``: their own size)."""
        return None if self.height is None else (self.height, self.width)


class Given(NamedTuple):
    """A request's given frames: ``first`` ``[B, 3, 1, H, W]`` (image-to-video) or ``clip``
    ``[1, 3, F, H, W]`` (a video to continue), in [-1, 1]; both ``None`` for text-to-video."""

    first: Optional[torch.Tensor] = None
    clip: Optional[torch.Tensor] = None


def read_given(request: Request) -> Given:
    """Read ``request``'s image(s) or video (:mod:`lvdm.data.given`), resized to its size; without
    a size, say the size the videos take from them."""
    from lvdm.data.given import read_images, read_video

    if request.image:
        given = Given(first=read_images(request.image, len(request.prompts), request.size))
    elif request.video:
        given = Given(clip=read_video(request.video, request.size)[None])
    else:
        return Given()
    if request.size is None:
        h, w = (given.first if given.first is not None else given.clip).shape[-2:]
        print(f"the videos are {h}x{w} (height x width), the size of the given frames; "
              "--height and --width resize them")
    return given


def apply_preset(module, name: str) -> None:
    """Give ``module`` the sampler defaults of preset ``name`` (:func:`lvdm.models.presets.from_name`):
    its objective (process, target convention, shift rule, sampler and steps), guidance scale,
    null-caption rule, negative prompt and fps micro-condition
    (:meth:`~lvdm.training.module.LatentDiffusionModule.use_sampler_defaults`)."""
    from lvdm.models.presets import from_name

    chosen = from_name(name)
    backbone = type(module.denoiser).__name__
    if backbone != chosen.backbone:
        raise ValueError(f"--preset {name} is a {chosen.backbone}; the checkpoint's denoiser is a {backbone}")
    module.use_sampler_defaults(chosen.sampler)


class Generator:
    """A checkpoint loaded once (:func:`lvdm.checkpoints.load.load_module`, safe for a stranger's file),
    turning :class:`Request` s into mp4 files.

    Args:
        checkpoint: a ``.ckpt`` written by ``lvdm fit``, a DeepSpeed checkpoint directory, a
            ``.safetensors`` from ``lvdm checkpoint export``, or with ``preset`` a published model's
            diffusers pipeline folder or hub id (:func:`lvdm.generation.published.module_from_pipeline`).
        use_ema: use the EMA weights when the checkpoint has them.
        device: ``cpu``, ``cuda``, ``cuda:1``… or ``auto`` (a GPU when there is one).
        preset: sample the way a published model does (:func:`apply_preset`).
        lora: a LoRA file (diffusers, original-model or kohya layout: :mod:`lvdm.finetune.lora_files`)
            merged into the denoiser's weights, ``lora_scale`` times its update.
    """

    def __init__(self, checkpoint: str, use_ema: bool = True, device: str = "auto", preset: Optional[str] = None,
                 lora: Optional[str] = None, lora_scale: float = 1.0):
        from lvdm.checkpoints.load import LoadedModel, load_module
        from lvdm.generation.published import is_pipeline_folder, is_pipeline_id, module_from_pipeline
        from lvdm.utils import resolve_device

        if is_pipeline_folder(checkpoint) or (preset and is_pipeline_id(checkpoint)):
            if not preset:
                raise ValueError(f"{checkpoint} is a diffusers pipeline folder: name the published model it holds "
                                 "with --preset (e.g. wan2.1-t2v-1.3b, hunyuanvideo, ltx-video-2b)")
            module = module_from_pipeline(checkpoint, preset).to(resolve_device(device))
            self.loaded = LoadedModel(module, "raw", None, f"pipeline folder {checkpoint!r} as {preset}")
        else:
            self.loaded = load_module(checkpoint, weights="auto" if use_ema else "raw",
                                      map_location=resolve_device(device))
            if preset:
                apply_preset(self.loaded.module, preset)
        self.module = self.loaded.module.eval()
        if lora:
            from lvdm.finetune.lora_files import merge_lora_file

            merged = merge_lora_file(self.module.denoiser, lora, lora_scale)
            self.loaded.source += f" + LoRA {lora} (x{lora_scale:g} on {len(merged)} linears)"
        self.fps = float(getattr(self.module, "fps", 8.0))

    @property
    def frame_multiple(self) -> int:
        """Frame counts the model accepts are multiples of this (temporal patch × compressor)."""
        return self.module.denoiser.patch_size[0] * self.module.compressor.time_downsample

    @property
    def pixel_multiple(self) -> int:
        """Heights and widths the model accepts are multiples of this."""
        return max(self.module.denoiser.patch_size[1:]) * self.module.compressor.spatial_downsample

    @torch.no_grad()
    def render(self, request: Request, given: Given, start: int, stop: int, progress: bool = False,
               fps: Optional[float] = None) -> torch.Tensor:
        """The videos ``[stop - start, 3, T, H, W]`` in [-1, 1] of prompts ``start:stop``; the noise
        of prompt ``i`` depends only on ``request.seed + i``. ``fps``: the frame-rate
        micro-condition (default: the model's)."""
        chunk, seed = request.prompts[start:stop], request.seed + start
        if given.clip is not None:
            return self.module.extend(given.clip.expand(len(chunk), -1, -1, -1, -1), chunk, request.extend,
                                      request.context_frames, request.num_frames, num_steps=request.steps,
                                      guidance_scale=request.guidance, seed=seed, progress=progress, fps=fps,
                                      guidance_schedule=request.guidance_schedule, step_cache=request.step_cache,
                                      negative_prompt=request.negative_prompt, step_cache_mode=request.step_cache_mode)
        return self.module.generate(
            chunk, request.num_frames, request.height, request.width, num_steps=request.steps,
            guidance_scale=request.guidance, seed=seed, progress=progress,
            first_frames=None if given.first is None else given.first[start:stop], loop=request.loop,
            class_labels=request.class_labels[start:stop] if request.class_labels else None,
            fps=fps, guidance_schedule=request.guidance_schedule, step_cache=request.step_cache,
            negative_prompt=request.negative_prompt, step_cache_mode=request.step_cache_mode,
        )

    def write(self, request: Request, out: str | Path, given: Optional[Given] = None, batch_size: int = 16,
              fps: Optional[float] = None, step_progress: bool = False) -> list[Path]:
        """Render ``request`` ``batch_size`` prompts at a time and save them in ``out``
        (:func:`save_videos`, at ``fps``, default the model's); returns the mp4 paths. ``given``:
        its frames when already read (default: :func:`read_given`). A bar follows the batches, or,
        with ``step_progress``, the sampler's steps (what the app's progress bar shows)."""
        from tqdm.auto import tqdm

        given = read_given(request) if given is None else given
        n, written = len(request.prompts), []
        for start in tqdm(range(0, n, batch_size), desc="generating", unit="batch", disable=step_progress):
            videos = self.render(request, given, start, min(start + batch_size, n), progress=step_progress, fps=fps)
            written += save_videos(videos, request.prompts[start:start + batch_size], out, fps=fps or self.fps,
                                   start_index=start)
        return written
