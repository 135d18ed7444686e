"""``lvdm sample``: prompts → mp4 files, through :class:`lvdm.generation.Generator` (also what
``lvdm eval fvd --fake_checkpoint`` calls; the CLI only parses its arguments)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from lvdm.diffusion.guidance import GuidanceSchedule
from lvdm.generation.generator import Generator, Request, read_given


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


def sample(checkpoint: str, prompts: Optional[list[str]] = None, prompt_file: Optional[str] = None,
           out: str = "samples", num_frames: Optional[int] = None, height: Optional[int] = None,
           width: Optional[int] = None, steps: Optional[int] = None, guidance: Optional[float] = None,
           seed: int = 0, batch_size: int = 16, use_ema: bool = True, fps: Optional[float] = None,
           device: str = "auto", image: Optional[str] = None, video: Optional[str] = None, extend: int = 0,
           context_frames: Optional[int] = None, loop: bool = False, overwrite: bool = False,
           preset: Optional[str] = None, class_label: Optional[list[int]] = None,
           guidance_interval: tuple[float, float] = (0.0, 1.0), guidance_method: Literal["cfg", "cfg_zero_star", "apg"] = "cfg",
           zero_init_steps: int = 0, apg_eta: float = 0.0, apg_norm_threshold: float = 0.0,
           apg_momentum: float = 0.0, step_cache: Union[float, Literal["calibrated"]] = 0.0,
           negative_prompt: Optional[str] = None,
           step_cache_mode: Literal["teacache", "first_block"] = "teacache",
           lora: Optional[str] = None, lora_scale: float = 1.0) -> list[str]:
    """Generate one mp4 per prompt from a trained checkpoint, ``<out>/<index>_<prompt>.mp4``, with the
    prompts in file order in ``<out>/prompts.txt``; the noise of prompt ``i`` depends only on ``seed + i``.
    Image-to-video with ``--image``, continuation with ``--video start.mp4 --extend N`` (models trained
    with ``frame_masks``).

    Args:
        checkpoint: a ``.ckpt`` written by ``lvdm fit`` (the model is rebuilt from its recipe), a DeepSpeed
            checkpoint directory, a ``.safetensors`` from ``lvdm checkpoint export`` (its weights as exported),
            or with ``preset`` a published model's diffusers pipeline folder or hub id (``WanPipeline`` for
            ``wan2.1-t2v-1.3b``, ``HunyuanVideoPipeline`` for ``hunyuanvideo``, ``LTXPipeline`` for
            ``ltx-video-2b``): its transformer, VAE and text encoders, sampled as the source samples.
        prompts: prompts to render, e.g. '["a red square moving left"]'.
        prompt_file: a text file, one prompt a line (after ``prompts``); ``-`` reads standard input.
        out: output folder.
        num_frames: frames per video (default: the model's sample_shape).
        height: video height in pixels (default: the model's sample_shape, or the given frames'). With
            ``image``/``video`` give ``height`` and ``width`` together: the given frames are resized (shorter
            side covers the size) and centre-cropped to it, as training clips are.
        width: video width in pixels (default: the model's sample_shape, or the given frames').
        steps: sampler steps (default: the objective's).
        guidance: classifier-free guidance scale (default: the model's; 1 disables it).
        seed: base noise seed, 0 to 2**32 - 1.
        batch_size: prompts generated together.
        use_ema: use the EMA weights stored in the checkpoint, when there are any.
        fps: frame rate of the mp4 files (default: the model's ``fps``, the rate of its training clips).
        device: ``cpu``, ``cuda``, ``cuda:1``… or ``auto`` (a GPU when there is one).
        image: image-to-video: an image file, the first frame of every video, or a folder of images,
            one per prompt in name order.
        video: a video file to continue (the same start for every prompt); needs ``extend``.
        extend: with ``video``: frames to add; the written videos hold the given frames first.
        context_frames: with ``video``: given frames per generated window (default: half of ``num_frames``).
        loop: with ``image``: the video also ends on the image (a seamless loop).
        overwrite: delete the videos already in ``out`` first; without it a folder that holds videos
            is refused (``lvdm eval`` would score the old ones with the new).
        preset: sample the way a published model does (``lvdm.models.presets.TABLE``, e.g.
            ``opensora-v1.2-stdit3-xl2``): its objective, target convention, shift rule, steps, guidance,
            null caption and negative prompt (Wan's) replace the checkpoint's (``steps``, ``guidance`` and
            ``negative_prompt`` still win); for a published model's weights, not one trained under lvdm's own
            objective. With a pipeline folder it also names the folder's model and its text encoders.
        class_label: class-conditional models (ImageNet DiT): one video per label, e.g. '[207, 360]'.
        guidance_interval: guide only at noise levels ``lo <= t <= hi`` (t in [0, 1], 1 = pure noise),
            e.g. '[0.2, 0.8]'; other steps evaluate the conditional branch alone, half the cost
            (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval"). Default: every step.
        guidance_method: ``cfg`` (plain classifier-free guidance), ``cfg_zero_star`` (Fan et al. 2025,
            "CFG-Zero*": the unconditional velocity scaled by its optimal multiple first) or ``apg``
            (Sadat et al. 2024, adaptive projected guidance: less oversaturation at high guidance).
            The last two need a rectified-flow model.
        zero_init_steps: CFG-Zero*'s zero-init: the first this many steps move nothing (a zero
            velocity, no model evaluation); rectified flow only.
        apg_eta: with ``apg``: weight of the update's part parallel to the conditional prediction (0: dropped).
        apg_norm_threshold: with ``apg``: cap on the update's norm per video (0: no cap).
        apg_momentum: with ``apg``: momentum β in (-1, 1) of the update over the steps (the paper uses -0.5; 0: none).
        step_cache: step caching threshold (e.g. 0.1; 0: off), or ``calibrated``: the threshold of the
            checkpoint's calibration file (``<checkpoint>.step_cache.json``, from ``lvdm cache calibrate``). A step
            whose change (``step_cache_mode``) is under it reuses the last computed block-stack residual instead of
            running the blocks. Fewer DiT evaluations, a slightly different video; the first and last steps always
            run (docs/sampling.md).
        step_cache_mode: ``teacache``: the first block's modulated input, relative L1 change accumulated since
            the last computed step (rescaled by the calibration's polynomial when the checkpoint has one);
            ``first_block``: block 0 always runs, and the other blocks are skipped while its residual's change
            since the last computed step is under the threshold.
        negative_prompt: what guidance steers away from: its text encoding replaces the empty
            caption in the unconditional half (default: the preset's, e.g. Wan's, else none; '' for none).
            Not with a learned null caption (e.g. Open-Sora's presets) or ``class_label``.
        lora: a LoRA ``.safetensors`` merged into the denoiser before sampling: lvdm's export, a diffusers
            LoRA (``transformer.*``), an original-model / ComfyUI one (``diffusion_model.*``) or a kohya /
            musubi one (``lora_unet_*``); a key no linear of the model takes is an error (docs/training.md, LoRA fine-tuning).
        lora_scale: the LoRA's strength: this times its update ``alpha / rank · B A``.
    """
    from lvdm.utils import read_prompt_file

    texts = list(prompts or []) + (read_prompt_file(prompt_file) if prompt_file else [])
    schedule = GuidanceSchedule(guidance_interval, guidance_method, zero_init_steps, apg_eta, apg_norm_threshold,
                                apg_momentum)
    request = Request(texts, num_frames, height, width, steps, guidance, seed, image, video, extend, context_frames,
                      loop, class_label, schedule, step_cache, negative_prompt, step_cache_mode)
    given = read_given(request)
    out_dir = Path(out)
    clear_video_folder(out_dir, overwrite)
    generator = Generator(checkpoint, use_ema=use_ema, device=device, preset=preset, lora=lora, lora_scale=lora_scale)
    if request.step_cache == "calibrated" and generator.module.step_cache_calibration is None:
        from lvdm.diffusion.cache_calibration import calibration_path

        raise FileNotFoundError(f"--step_cache calibrated: the calibration file {str(calibration_path(checkpoint))!r} "
                                f"does not exist; write it with `lvdm cache calibrate --checkpoint {checkpoint}`")
    fps = fps or generator.fps
    print(f"sampling with {generator.loaded.describe()}; writing {fps:g} fps")
    written = generator.write(request, out_dir, given, batch_size=batch_size, fps=fps)
    print(f"wrote {len(written)} videos to {out_dir}/")
    return [str(path) for path in written]
