"""``lvdm app``: a web page over a trained checkpoint — prompts in, mp4 videos out.

Built with Gradio (``pip install 'lvdm[app]'``). The model is loaded once through
:func:`lvdm.checkpoint.load_module`; each request renders one video per prompt with
:meth:`~lvdm.module.LatentDiffusionModule.generate` (the sampler's progress is shown as the
page's progress bar; an optional image makes it image-to-video) and writes them with :func:`lvdm.sampling.save_videos` to a fresh folder
under ``out``, from where the page plays the first and offers all for download.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Optional

__all__ = ["VideoGenerator", "build_app", "app"]


class VideoGenerator:
    """What the page calls: a loaded model and the folder its videos go to.

    Args:
        checkpoint: a ``.ckpt``, DeepSpeed checkpoint directory or exported ``.safetensors``.
        out: folder for the generated videos (default: a temporary folder).
        use_ema: use the EMA weights when the checkpoint has them.
        device: ``cpu``, ``cuda``, ``cuda:1``… or ``auto``.
    """

    def __init__(self, checkpoint: str, out: Optional[str] = None, use_ema: bool = True, device: str = "auto"):
        from lvdm.checkpoint import load_module
        from lvdm.utils import resolve_device

        self.loaded = load_module(checkpoint, weights="auto" if use_ema else "raw", map_location=resolve_device(device))
        self.module = self.loaded.module.eval()
        self.out = Path(out) if out else Path(tempfile.mkdtemp(prefix="lvdm_app_"))
        self.fps = float(getattr(self.module, "fps", 8.0))
        self._lock = threading.Lock()  # one generation at a time: the model is shared
        self._count = 0

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

    def __call__(self, prompts: str, seconds: float, height: int, width: int, steps: int, guidance: float,
                 seed: int, image: Optional[str] = None, loop: bool = False) -> list[Path]:
        """Render one mp4 per non-empty line of ``prompts``; returns their paths. With ``image``
        (a file) every video starts on it (image-to-video; the size follows the image), and with
        ``loop`` also ends on it."""
        import torch

        from lvdm.data.given import read_images
        from lvdm.sampling import save_videos

        lines = [line.strip() for line in prompts.splitlines() if line.strip()]
        if not lines:
            raise ValueError("write at least one prompt")
        first = read_images(image, len(lines)) if image else None
        if loop and first is None:
            raise ValueError("a loop starts and ends on an image: give one")
        if first is not None:
            height, width = first.shape[-2:]
        for name, value in (("height", height), ("width", width)):
            if value <= 0 or value % self.pixel_multiple:
                raise ValueError(f"{name} must be a positive multiple of {self.pixel_multiple}; got {value}")
        with self._lock, torch.no_grad():
            self._count += 1
            folder = self.out / f"request_{self._count:05d}"
            videos = self.module.generate(lines, num_frames=self.frames_for(seconds), height=int(height),
                                          width=int(width), num_steps=int(steps), guidance_scale=float(guidance),
                                          seed=int(seed), progress=True, first_frames=first, loop=loop)
            return save_videos(videos, lines, folder, fps=self.fps)


def build_app(generator: VideoGenerator):
    """The Gradio page over ``generator`` (a ``gradio.Blocks``; ``.launch()`` serves it)."""
    import gradio as gr

    module = generator.module
    frames, height, width = module.sample_shape
    steps = getattr(module.objective, "num_sampling_steps", 20)

    def run(prompts, seconds, h, w, n_steps, guidance, seed, image=None, loop=False,
            progress=gr.Progress(track_tqdm=True)):
        try:
            paths = generator(prompts, seconds, int(h), int(w), int(n_steps), guidance, int(seed), image, bool(loop))
        except (ValueError, FileNotFoundError) as err:
            raise gr.Error(str(err)) from None
        return str(paths[0]), [str(p) for p in paths]

    with gr.Blocks(title="lvdm") as page:
        gr.Markdown(f"### lvdm — text to video\n{generator.loaded.describe()}; {generator.fps:g} fps")
        with gr.Row():
            with gr.Column():
                prompts = gr.Textbox(label="prompts (one video per line)", lines=3, value="a red square moving left")
                seconds = gr.Number(label="duration (s)", value=frames / generator.fps, minimum=0)
                with gr.Row():
                    h = gr.Number(label="height", value=height, precision=0, step=generator.pixel_multiple)
                    w = gr.Number(label="width", value=width, precision=0, step=generator.pixel_multiple)
                n_steps = gr.Slider(1, 200, value=steps, step=1, label="sampler steps")
                guidance = gr.Slider(1.0, 15.0, value=module.guidance_scale, step=0.5, label="guidance scale")
                seed = gr.Number(label="seed", value=0, precision=0)
                with gr.Accordion("image-to-video (models trained with frame masks)", open=False):
                    image = gr.Image(label="first frame (the size follows it)", type="filepath")
                    loop = gr.Checkbox(label="loop: end on the image too", value=False)
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                video = gr.Video(label="first video")
                files = gr.File(label="all videos (mp4)", file_count="multiple")
        button.click(run, [prompts, seconds, h, w, n_steps, guidance, seed, image, loop], [video, files],
                     api_name="generate")
    return page


def app(
    checkpoint: str,
    out: Optional[str] = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    use_ema: bool = True,
    device: str = "auto",
) -> None:
    """Serve a web page that generates videos from a trained checkpoint.

    Args:
        checkpoint: a ``.ckpt`` written by ``lvdm fit``, a DeepSpeed checkpoint directory, or a
            ``.safetensors`` from ``lvdm checkpoint export``.
        out: folder the generated mp4s are kept in (default: a temporary folder).
        host: address to listen on (``0.0.0.0`` to serve other machines).
        port: port to listen on.
        use_ema: use the EMA weights when the checkpoint has them.
        device: ``cpu``, ``cuda``, ``cuda:1``… or ``auto`` (a GPU when there is one).
    """
    generator = VideoGenerator(checkpoint, out=out, use_ema=use_ema, device=device)
    print(f"serving {generator.loaded.describe()}; videos go to {generator.out}/")
    build_app(generator).queue().launch(server_name=host, server_port=port, allowed_paths=[str(generator.out)])
