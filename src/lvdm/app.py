"""``lvdm app``: a web page over a trained checkpoint — prompts in, mp4 videos out.

Built with Gradio (``pip install 'lvdm[app]'``). The model is loaded once through
:func:`lvdm.checkpoints.load.load_module`; each request renders one video per prompt with
:meth:`~lvdm.training.module.LatentDiffusionModule.generate` (the sampler's progress is shown as the
page's progress bar; an optional image makes it image-to-video) and writes them with :func:`lvdm.sampling.save_videos` to a fresh folder
under ``out``, from where the page plays the first and offers all for download.

The page is meant to be shown to others: each request is checked against :class:`Limits`
before anything is read or rendered, the image must be a file the page received as an upload
(never a path on the server), requests wait in a bounded queue, and ``auth`` can ask for a
password. A refused request gets a one-line message on the page, not a traceback.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

__all__ = ["Limits", "VideoGenerator", "app", "build_app", "read_auth", "uploaded_file"]

MAX_SEED = 2**32 - 1


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


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _number(name: str, value, low: float, high: float, flag: str = "", unit: str = "") -> float:
    """``value`` if it is a number in ``[low, high]``; else a ValueError naming ``name`` and the limit."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number; got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {_show(low)}{unit}; got {_show(value)}{unit}")
    if value > high:
        flag = f" (--{flag})" if flag else ""
        raise ValueError(f"{name} {_show(value)}{unit} is over the limit of {_show(high)}{unit}{flag}")
    return value


def _whole(name: str, value, low: int, high: int, flag: str = "") -> int:
    """``value`` as an int if it is a whole number in ``[low, high]`` (see :func:`_number`)."""
    if not float(_number(name, value, low, high, flag)).is_integer():
        raise ValueError(f"{name} must be a whole number; got {_show(value)}")
    return int(value)


def uploaded_file(path: str, upload_folder: str) -> Path:
    """``path``, resolved, if it is a file inside gradio's ``upload_folder`` (where the page keeps
    what visitors upload); a ValueError otherwise, decided before the file is opened or copied:
    a visitor must not make the server read its own files (``{"path": "/etc/…"}`` in an API call)."""
    resolved, folder = Path(os.path.realpath(path)), Path(os.path.realpath(upload_folder))
    if resolved == folder or not resolved.is_relative_to(folder) or not resolved.is_file():
        raise ValueError("the image must be a file uploaded through the page; a path on the server is refused")
    return resolved


class VideoGenerator:
    """What the page calls: a loaded model, the folder its videos go to, and what a request may ask for.

    Args:
        checkpoint: a ``.ckpt``, DeepSpeed checkpoint directory or exported ``.safetensors``.
        out: folder for the generated videos (default: a temporary folder).
        use_ema: use the EMA weights when the checkpoint has them.
        device: ``cpu``, ``cuda``, ``cuda:1``… or ``auto``.
        limits: what one request may ask for (default: :class:`Limits` ``()``).
        max_jobs: requests rendered at the same time (the model is shared; the rest wait).
    """

    def __init__(self, checkpoint: str, out: Optional[str] = None, use_ema: bool = True, device: str = "auto",
                 limits: Optional[Limits] = None, max_jobs: int = 1):
        from lvdm.checkpoints.load import load_module
        from lvdm.utils import resolve_device

        if max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1; got {max_jobs}")
        self.loaded = load_module(checkpoint, weights="auto" if use_ema else "raw", map_location=resolve_device(device))
        self.module = self.loaded.module.eval()
        self.out = Path(out) if out else Path(tempfile.mkdtemp(prefix="lvdm_app_"))
        self.fps = float(getattr(self.module, "fps", 8.0))
        self.limits = limits or Limits()
        self.max_jobs = max_jobs
        self._slots = threading.BoundedSemaphore(max_jobs)
        self._count = itertools.count(1)  # next() is atomic: request folders stay distinct across threads

    @property
    def frame_multiple(self) -> int:
        """Frame counts the model accepts are multiples of this (temporal patch × compressor)."""
        return self.module.denoiser.patch_size[0] * self.module.compressor.time_downsample

    @property
    def pixel_multiple(self) -> int:
        """Heights and widths the model accepts are multiples of this."""
        return max(self.module.denoiser.patch_size[1:]) * self.module.compressor.spatial_downsample

    def frames_for(self, seconds: float) -> int:
        """The frame count closest to ``seconds`` of video that the model accepts (at least one multiple)."""
        k = self.frame_multiple
        return max(k, round(seconds * self.fps / k) * k)

    def check_prompts(self, prompts: str) -> list[str]:
        """The non-empty lines of ``prompts``, within ``max_prompts`` lines of ``max_prompt_chars``."""
        lines = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
        if not lines:
            raise ValueError("write at least one prompt")
        limits = self.limits
        if len(lines) > limits.max_prompts:
            raise ValueError(f"{len(lines)} prompt lines are over the limit of {limits.max_prompts} (--max_prompts)")
        longest = max(len(line) for line in lines)
        if longest > limits.max_prompt_chars:
            raise ValueError(f"a prompt of {longest} characters is over the limit of {limits.max_prompt_chars} "
                             "(--max_prompt_chars)")
        return lines

    def check_size(self, height, width, what: str = "") -> tuple[int, int]:
        """``height, width`` as ints: positive multiples of :attr:`pixel_multiple` within ``max_size``."""
        sides = []
        for name, value in (("height", height), ("width", width)):
            value = _whole(f"{what}{name}", value, 1, self.limits.max_size, "max_size")
            if value % self.pixel_multiple:
                raise ValueError(f"{what}{name} must be a positive multiple of {self.pixel_multiple}; got {value}")
            sides.append(value)
        return sides[0], sides[1]

    def image_size(self, image: str) -> tuple[int, int]:
        """The ``height, width`` of an image file, read from its header, checked by :meth:`check_size`."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(image) as img:
                width, height = img.size
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot read the image: {exc}") from None
        return self.check_size(height, width, "the image's ")

    def __call__(self, prompts: str, seconds: float, height: int, width: int, steps: int, guidance: float,
                 seed: int, image: Optional[str] = None, loop: bool = False) -> list[Path]:
        """Render one mp4 per non-empty line of ``prompts``; returns their paths. With ``image``
        (a file) every video starts on it, resized and centre-cropped to ``height × width`` (image-to-video), and with
        ``loop`` also ends on it. Everything is checked against :attr:`limits` first (a ValueError
        naming the limit); at most ``max_jobs`` calls render at once, the others wait."""
        import torch

        from lvdm.data.given import read_images
        from lvdm.sampling import save_videos

        lines, limits = self.check_prompts(prompts), self.limits
        frames = self.frames_for(_number("duration", seconds, 0, limits.max_seconds, "max_seconds", " s"))
        steps = _whole("steps", steps, 1, limits.max_steps, "max_steps")
        guidance, seed = _number("guidance", guidance, 0, math.inf), _whole("seed", seed, 0, MAX_SEED)
        if loop and image is None:
            raise ValueError("a loop starts and ends on an image: give one")
        if image is not None and Path(image).is_file():
            self.image_size(image)  # from the header: a huge image is refused before it is decoded
        height, width = self.check_size(height, width)
        first = read_images(image, len(lines), (height, width)) if image is not None else None
        with self._slots, torch.no_grad():
            # an unguessable folder: the page serves files from `out`, and one visitor's videos are not another's
            folder = self.out / f"request_{next(self._count):05d}_{secrets.token_hex(8)}"
            videos = self.module.generate(lines, num_frames=frames, height=height, width=width, num_steps=steps,
                                          guidance_scale=float(guidance), seed=seed, progress=True,
                                          first_frames=first, loop=loop)
            return save_videos(videos, lines, folder, fps=self.fps)

    def describe_limits(self) -> str:
        """The limits as the page shows them."""
        limits = self.limits
        return (f"at most {limits.max_prompts} prompts of {limits.max_prompt_chars} characters, "
                f"{limits.max_seconds:g} s, {limits.max_size} pixels a side, {limits.max_steps} steps")


def read_auth(auth: Optional[str] = None, auth_file: Optional[str] = None) -> list[tuple[str, str]]:
    """The ``(user, password)`` pairs of ``auth`` (``user:password``) and of ``auth_file`` (one
    ``user:password`` a line; blank lines and ``#`` comments skipped). Errors never show a password."""
    entries = [] if auth is None else [("--auth", auth)]
    if auth_file is not None:
        lines = Path(auth_file).read_text(encoding="utf-8").splitlines()
        listed = [(f"{auth_file} line {n}", line.strip()) for n, line in enumerate(lines, 1)
                  if line.strip() and not line.strip().startswith("#")]
        if not listed:
            raise ValueError(f"{auth_file} holds no user:password line")
        entries += listed
    pairs = []
    for where, entry in entries:
        user, colon, password = entry.partition(":")
        if not (colon and user.strip() and password):
            raise ValueError(f"{where}: expected user:password (a user name, a colon, a password)")
        pairs.append((user.strip(), password))
    return pairs


def build_app(generator: VideoGenerator, max_queue: int = 16):
    """The Gradio page over ``generator`` (a ``gradio.Blocks``; ``.launch()`` serves it), queued:
    ``generator.max_jobs`` requests render at once, up to ``max_queue`` more wait, the rest are
    turned away. The API goes through the queue too."""
    import gradio as gr

    if max_queue < 1:
        raise ValueError(f"max_queue must be at least 1; got {max_queue}")
    module, fps, limits = generator.module, generator.fps, generator.limits
    frames, height, width = module.sample_shape
    k = generator.frame_multiple

    def run(prompts, seconds, h, w, n_steps, guidance, seed, image=None, loop=False,
            progress=gr.Progress(track_tqdm=True)):
        try:  # the upload check comes first: nothing on the server is opened for a path a visitor sent
            image = None if image is None else str(uploaded_file(image, picture.GRADIO_CACHE))
            paths = generator(prompts, seconds, h, w, n_steps, guidance, seed, image, bool(loop))
        except (ValueError, FileNotFoundError) as err:  # the visitor's mistake: a message, no traceback
            raise gr.Error(str(err), print_exception=False) from None
        n = generator.frames_for(seconds)
        return str(paths[0]), [str(p) for p in paths], f"{len(paths)} video(s) of {n} frames ({n / fps:.2f} s)"

    with gr.Blocks(title="lvdm") as page:
        gr.Markdown(f"### lvdm — text to video\n{generator.loaded.describe()}; {fps:g} fps; "
                    f"{generator.describe_limits()}")
        with gr.Row():
            with gr.Column():
                prompts = gr.Textbox(label="prompts (one video per line)", lines=3, value="a red square moving left")
                seconds = gr.Number(label="duration (s)", value=round(frames / fps, 2),
                                    info=f"{fps:g} fps; rounded to a multiple of {k} frames ({k / fps:.2f} s)")
                with gr.Row():
                    h = gr.Number(label="height", value=height, precision=0, step=generator.pixel_multiple)
                    w = gr.Number(label="width", value=width, precision=0, step=generator.pixel_multiple)
                n_steps = gr.Number(label="sampler steps", precision=0, info=f"at most {limits.max_steps}",
                                    value=min(getattr(module.objective, "num_sampling_steps", 20), limits.max_steps))
                guidance = gr.Slider(1.0, 15.0, value=module.guidance_scale, step=0.5, label="guidance scale")
                seed = gr.Number(label="seed", value=0, precision=0)
                with gr.Accordion("image-to-video (models trained with frame masks)", open=False):
                    picture = gr.Image(label="first frame (resized and cropped to the size above)", type="filepath", image_mode=None)
                    loop = gr.Checkbox(label="loop: end on the image too", value=False)
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                video = gr.Video(label="first video")
                files = gr.File(label="all videos (mp4)", file_count="multiple")
                note = gr.Markdown()
        button.click(run, [prompts, seconds, h, w, n_steps, guidance, seed, picture, loop], [video, files, note],
                     api_name="generate", concurrency_limit=generator.max_jobs)
    return page.queue(max_size=max_queue, api_open=False)


def app(
    checkpoint: str,
    out: Optional[str] = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    use_ema: bool = True,
    device: str = "auto",
    max_seconds: float = 8.0,
    max_size: int = 512,
    max_steps: int = 100,
    max_prompts: int = 4,
    max_prompt_chars: int = 500,
    max_jobs: int = 1,
    max_queue: int = 16,
    max_upload_mb: int = 10,
    auth: Optional[str] = None,
    auth_file: Optional[str] = None,
) -> None:
    """Serve a web page that generates videos from a trained checkpoint.

    A request over a limit is refused with a one-line message naming it; image-to-video takes only
    images uploaded through the page. To serve others, set ``--host 0.0.0.0`` and ``--auth_file``.

    Args:
        checkpoint: a ``.ckpt`` written by ``lvdm fit``, a DeepSpeed checkpoint directory, or a
            ``.safetensors`` from ``lvdm checkpoint export``.
        out: folder the generated mp4s are kept in (default: a temporary folder).
        host: address to listen on (``0.0.0.0`` to serve other machines).
        port: port to listen on.
        use_ema: use the EMA weights when the checkpoint has them.
        device: ``cpu``, ``cuda``, ``cuda:1``… or ``auto`` (a GPU when there is one).
        max_seconds: longest video a request may ask for, in seconds.
        max_size: largest height and width, in pixels (an uploaded image's sides too).
        max_steps: most sampler steps a request may ask for.
        max_prompts: most prompt lines (videos) in one request.
        max_prompt_chars: longest prompt line, in characters.
        max_jobs: requests rendered at the same time (each holds its videos in memory).
        max_queue: requests that may wait for their turn; more are turned away.
        max_upload_mb: largest image upload, in MiB.
        auth: ``user:password`` the page asks for (visible in the process list: prefer ``auth_file``).
        auth_file: a file of ``user:password`` lines (``#`` comments allowed); any of them logs in.
    """
    limits = Limits(max_seconds, max_size, max_steps, max_prompts, max_prompt_chars)
    users = read_auth(auth, auth_file)
    generator = VideoGenerator(checkpoint, out=out, use_ema=use_ema, device=device, limits=limits, max_jobs=max_jobs)
    page = build_app(generator, max_queue)
    print(f"serving {generator.loaded.describe()}; videos go to {generator.out}/; {generator.describe_limits()}; "
          + (f"a password is asked ({len(users)} user(s))" if users else "no password is asked (see --auth_file)"))
    page.launch(server_name=host, server_port=port, allowed_paths=[str(generator.out)], auth=users or None,
                max_file_size=max_upload_mb * 1024 * 1024)
