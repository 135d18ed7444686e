"""``lvdm app``: a web page over a trained checkpoint — prompts in, mp4 videos out.

Built with Gradio (``pip install 'lvdm[app]'``) over the generator ``lvdm sample`` uses
(:class:`lvdm.generation.Generator`: the model is loaded once); each request renders one video
per prompt (the sampler's progress is shown as the page's progress bar; an optional image makes
it image-to-video) into a fresh folder under ``out``, from where the page plays the first and
offers all for download.

The page is meant to be shown to others: each request is checked against :class:`Limits`
(:class:`lvdm.generation.Request`) before anything is read or rendered, the image must be a file the page received as an upload
(never a path on the server), requests wait in a bounded queue, and ``auth`` can ask for a
password. A refused request gets a one-line message on the page, not a traceback.
"""

from __future__ import annotations

import itertools
import os
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Optional

from lvdm.diffusion.guidance import GuidanceSchedule
from lvdm.diffusion.step_cache import MODES
from lvdm.generation.generator import Generator, Limits, Request, check_number, read_given

__all__ = ["Limits", "VideoGenerator", "app", "build_app", "read_auth", "uploaded_file"]


def uploaded_file(path: str, upload_folder: str) -> Path:
    """``path``, resolved, if it is a file inside gradio's ``upload_folder`` (where the page keeps
    what visitors upload); a ValueError otherwise, decided before the file is opened or copied:
    a visitor must not make the server read its own files (``{"path": "/etc/…"}`` in an API call)."""
    resolved, folder = Path(os.path.realpath(path)), Path(os.path.realpath(upload_folder))
    if resolved == folder or not resolved.is_relative_to(folder) or not resolved.is_file():
        raise ValueError("the image must be a file uploaded through the page; a path on the server is refused")
    return resolved


class VideoGenerator(Generator):
    """What the page calls: a :class:`~lvdm.generation.Generator`, the folder its videos go to, and
    what a request may ask for.

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
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1; got {max_jobs}")
        super().__init__(checkpoint, use_ema=use_ema, device=device)
        self.out = Path(out) if out else Path(tempfile.mkdtemp(prefix="lvdm_app_"))
        self.limits = limits or Limits()
        self.max_jobs = max_jobs
        self._slots = threading.BoundedSemaphore(max_jobs)
        self._count = itertools.count(1)  # next() is atomic: request folders stay distinct across threads

    def frames_for(self, seconds: float) -> int:
        """The frame count closest to ``seconds`` of video that the model accepts (at least one multiple)."""
        k = self.frame_multiple
        return max(k, round(seconds * self.fps / k) * k)

    def request(self, prompts: str, seconds: float, height: int, width: int, steps: int, guidance: float,
                seed: int, image: Optional[str] = None, loop: bool = False, negative_prompt: Optional[str] = None,
                step_cache: float = 0.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                step_cache_mode: str = "teacache") -> Request:
        """The page's fields as a :class:`~lvdm.generation.Request` checked against :attr:`limits`
        (a ValueError naming the limit); the size must also be a multiple of :attr:`pixel_multiple`.
        A blank ``negative_prompt`` is none (the model's default); ``step_cache``, ``step_cache_mode``
        and ``guidance_interval`` are those of ``lvdm sample``."""
        lines = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
        seconds = check_number("duration", seconds, 0, self.limits.max_seconds, "max_seconds", " s")
        negative = (negative_prompt or "").strip() or None
        request = Request(lines, self.frames_for(seconds), height, width, steps, guidance, seed, image=image,
                          loop=loop, guidance_schedule=GuidanceSchedule(tuple(guidance_interval)),
                          step_cache=step_cache, negative_prompt=negative, step_cache_mode=step_cache_mode,
                          limits=self.limits)
        for name, value in (("height", request.height), ("width", request.width)):
            if value % self.pixel_multiple:
                raise ValueError(f"{name} must be a positive multiple of {self.pixel_multiple}; got {value}")
        return request

    def __call__(self, prompts: str, seconds: float, height: int, width: int, steps: int, guidance: float,
                 seed: int, image: Optional[str] = None, loop: bool = False, negative_prompt: Optional[str] = None,
                 step_cache: float = 0.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                 step_cache_mode: str = "teacache") -> list[Path]:
        """Render one mp4 per non-empty line of ``prompts``; returns their paths. With ``image``
        (a file) every video starts on it, resized and centre-cropped to ``height × width`` (image-to-video), and with
        ``loop`` also ends on it. Everything is checked first (:meth:`request`); at most
        ``max_jobs`` calls render at once, the others wait. ``negative_prompt``, ``step_cache``,
        ``step_cache_mode`` and ``guidance_interval``: see :meth:`request`."""
        request = self.request(prompts, seconds, height, width, steps, guidance, seed, image, loop,
                               negative_prompt, step_cache, guidance_interval, step_cache_mode)
        given = read_given(request)
        with self._slots:
            # an unguessable folder: the page serves files from `out`, and one visitor's videos are not another's
            folder = self.out / f"request_{next(self._count):05d}_{secrets.token_hex(8)}"
            return self.write(request, folder, given, step_progress=True)


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


def cache_note(calibration) -> str:
    """What the page says under the step-cache rule: the model's calibrated thresholds, if any."""
    if calibration is None:
        return "teacache: on the first block's input; first_block: on its output (no calibration file)"
    shown = ", ".join(f"{mode} {calibration.thresholds[mode]:.3g} ({calibration.speedups[mode]:.1f}x fewer)"
                      for mode in MODES)
    return f"this model's calibrated thresholds: {shown}"


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

    def run(prompts, seconds, h, w, n_steps, guidance, seed, image=None, loop=False, negative=None,
            cache=0.0, lo=0.0, hi=1.0, mode="teacache", progress=gr.Progress(track_tqdm=True)):
        try:  # the upload check comes first: nothing on the server is opened for a path a visitor sent
            image = None if image is None else str(uploaded_file(image, picture.GRADIO_CACHE))
            paths = generator(prompts, seconds, h, w, n_steps, guidance, seed, image, bool(loop), negative, cache,
                              (lo, hi), mode)
        except (ValueError, FileNotFoundError) as err:  # the visitor's mistake: a message, no traceback
            raise gr.Error(str(err), print_exception=False) from None
        n = generator.frames_for(seconds)
        return str(paths[0]), [str(p) for p in paths], f"{len(paths)} video(s) of {n} frames ({n / fps:.2f} s)"

    with gr.Blocks(title="lvdm") as page:
        gr.Markdown(f"### lvdm — text to video\n{generator.loaded.describe()}; {fps:g} fps; "
                    f"{generator.limits.describe()}")
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
                negative = gr.Textbox(label="negative prompt (what guidance steers away from; blank: none)",
                                      lines=2, value=module.negative_prompt or "")
                with gr.Accordion("faster sampling", open=False):
                    with gr.Row():
                        cache = gr.Number(label="step cache threshold", value=0.0,
                                          info="e.g. 0.1: skip steps that change little (0: off)")
                        mode = gr.Dropdown(list(MODES), value="teacache", label="step cache rule",
                                           info=cache_note(module.step_cache_calibration))
                    with gr.Row():
                        lo = gr.Number(label="guide from noise level", value=0.0)
                        hi = gr.Number(label="guide up to noise level", value=1.0,
                                       info="0 clean … 1 pure noise; steps outside cost half")
                with gr.Accordion("image-to-video (models trained with frame masks)", open=False):
                    picture = gr.Image(label="first frame (resized and cropped to the size above)", type="filepath", image_mode=None)
                    loop = gr.Checkbox(label="loop: end on the image too", value=False)
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                video = gr.Video(label="first video")
                files = gr.File(label="all videos (mp4)", file_count="multiple")
                note = gr.Markdown()
        button.click(run, [prompts, seconds, h, w, n_steps, guidance, seed, picture, loop, negative, cache, lo, hi,
                           mode],
                     [video, files, note],
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
    print(f"serving {generator.loaded.describe()}; videos go to {generator.out}/; {generator.limits.describe()}; "
          + (f"a password is asked ({len(users)} user(s))" if users else "no password is asked (see --auth_file)"))
    page.launch(server_name=host, server_port=port, allowed_paths=[str(generator.out)], auth=users or None,
                max_file_size=max_upload_mb * 1024 * 1024)
