"""The ``lvdm`` command.

``lvdm fit|validate|test`` are Lightning's CLI over YAML recipes; ``lvdm sample``,
``lvdm data synth`` and ``lvdm eval probe`` are lvdm's own commands, whose arguments come
from the typed signatures and docstrings of the functions they call (one way to turn config
into objects: jsonargparse).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

from jsonargparse import ArgumentParser

LIGHTNING_COMMANDS = ("fit", "validate", "test")

OVERVIEW = """\
usage: lvdm <command> [options]

lvdm trains and samples latent video diffusion transformers (Open-Sora family).

Training (Lightning CLI; compose YAML recipes with --config, override any key on the line):
  fit         train a model          lvdm fit --config recipes/tiny/cross_attn.yaml
  validate    run the validation loop on a checkpoint
  test        run the test loop on a checkpoint   lvdm test --config <recipe> --ckpt_path last.ckpt

lvdm commands:
  sample      prompts -> mp4 files   lvdm sample --checkpoint last.ckpt --prompts '["a red square moving left"]'
  data synth  write the synthetic moving-shapes dataset as WebDataset shards
  data encode precompute a compressor's latents of video shards into latent shards
  eval probe  score generated shapes videos: colour / shape / direction accuracy
  eval fvd    Fréchet Video Distance (original TF protocol)   lvdm eval fvd --real <shards|mp4s> --fake <mp4s>
  eval clipscore  CLIPScore of videos against their prompts  lvdm eval clipscore --videos <mp4s> --clip <path|hub id>
  estimate    parameters, FLOPs, GPU-hours, s/video, memory/GPU   lvdm estimate --size XL/2 --frames 16
  checkpoint export  a .ckpt or DeepSpeed checkpoint -> one .safetensors   lvdm checkpoint export --checkpoint last.ckpt --out model.safetensors --ema true

Run `lvdm <command> --help` for the options of a command.
"""


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
    fps: int = 8,
    device: str = "auto",
    image: Optional[str] = None,
    video: Optional[str] = None,
    extend: int = 0,
    context_frames: Optional[int] = None,
) -> list[str]:
    """Generate one mp4 per prompt from a trained checkpoint; image-to-video with ``--image``,
    continuation with ``--video start.mp4 --extend N``.

    Videos are written as ``<out>/<index>_<prompt>.mp4`` with the prompts, in file order, in
    ``<out>/prompts.txt``. The noise of prompt ``i`` depends only on ``seed + i``. Given frames
    (``--image``, ``--video``) need a model trained with ``frame_masks``.

    Args:
        checkpoint: a ``.ckpt`` written by ``lvdm fit`` (the model is rebuilt from its recipe),
            or a ``.safetensors`` file from ``lvdm checkpoint export`` (which already holds the
            weights it was exported with; ``use_ema`` does not apply).
        prompts: prompts to render, e.g. '["a red square moving left"]'.
        prompt_file: a text file with one prompt per line (added after ``prompts``).
        out: output folder.
        num_frames: frames per video (default: the model's sample_shape).
        height: video height in pixels (default: the model's sample_shape).
        width: video width in pixels (default: the model's sample_shape).
        steps: sampler steps (default: the objective's).
        guidance: classifier-free guidance scale (default: the model's; 1 disables it).
        seed: base noise seed.
        batch_size: prompts generated together.
        use_ema: use the EMA weights stored in the checkpoint, when there are any.
        fps: frame rate of the mp4 files.
        device: ``cpu``, ``cuda``, ``cuda:1``… or ``auto`` (a GPU when there is one).
        image: image-to-video: an image file, the first frame of every video, or a folder of
            images, one per prompt in name order; the video size follows the image.
        video: a video file to continue (the same start for every prompt); needs ``extend``.
        extend: with ``video``: frames to add; the written videos hold the given frames first.
        context_frames: with ``video``: given frames per generated window (default: half of
            ``num_frames``).
    """
    import torch
    from tqdm.auto import tqdm

    from lvdm.callbacks.ema import load_ema_weights
    from lvdm.module import LatentDiffusionModule
    from lvdm.utils import save_videos

    all_prompts = list(prompts or [])
    if prompt_file:
        path = Path(prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
        all_prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not all_prompts:
        raise ValueError("no prompts: give --prompts and/or --prompt_file")
    if not Path(checkpoint).is_file():
        hint = " (a DeepSpeed checkpoint directory: convert it with `lvdm checkpoint export`)" if Path(checkpoint).is_dir() else ""
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist{hint}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    if checkpoint.endswith(".safetensors"):
        from lvdm.distributed.checkpoint import load_safetensors_module

        module = load_safetensors_module(checkpoint)
    else:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if "_instantiator" not in ckpt.get("hyper_parameters", {}):
            raise ValueError(
                f"checkpoint {checkpoint!r} carries no recipe (it was not trained with `lvdm fit`); "
                "build the LatentDiffusionModule in Python and load its state_dict instead"
            )
        module = LatentDiffusionModule.load_from_checkpoint(checkpoint, map_location="cpu")
        if use_ema:
            load_ema_weights(ckpt, module)
    module.to(device).eval()
    if image and video:
        raise ValueError("give --image (image-to-video) or --video (continuation), not both")
    if video and extend < 1:
        raise ValueError("--video needs --extend N: the number of frames to add")
    if extend and not video:
        raise ValueError("--extend continues a video: give it with --video start.mp4")
    from lvdm.data.given import read_images, read_video

    first = read_images(image, len(all_prompts)) if image else None
    start_clip = read_video(video)[None] if video else None

    out_dir = Path(out)
    (out_dir / "prompts.txt").unlink(missing_ok=True)
    written: list[str] = []
    for start in tqdm(range(0, len(all_prompts), batch_size), desc="generating", unit="batch"):
        chunk = all_prompts[start : start + batch_size]
        if start_clip is not None:
            videos = module.extend(start_clip.expand(len(chunk), -1, -1, -1, -1), chunk, extend, context_frames,
                                   num_frames, num_steps=steps, guidance_scale=guidance, seed=seed + start)
        else:
            videos = module.generate(
                chunk, num_frames, height, width, num_steps=steps, guidance_scale=guidance, seed=seed + start,
                first_frames=None if first is None else first[start : start + batch_size],
            )
        written += [str(p) for p in save_videos(videos, chunk, out_dir, fps=fps, start_index=start)]
    print(f"wrote {len(written)} videos to {out_dir}/")
    return written


def _function_parser(fn: Callable, prog: str) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=(fn.__doc__ or "").split("\n\n")[0], exit_on_error=True)
    parser.add_argument("--config", action="config", help="a YAML file with these options")
    parser.add_function_arguments(fn, as_group=False)
    return parser


def _run_function(fn: Callable, prog: str, argv: list[str]):
    parser = _function_parser(fn, prog)
    cfg = parser.instantiate_classes(parser.parse_args(argv))
    kwargs = {k: v for k, v in vars(cfg).items() if k != "config"}
    return fn(**kwargs)


def _subcommands() -> dict[str, dict[str, Callable]]:
    from lvdm.data.latents import encode_shards
    from lvdm.data.synthetic import write_synthetic_dataset
    from lvdm.distributed.checkpoint import export_checkpoint
    from lvdm.metrics.evaluate import clipscore, fvd
    from lvdm.metrics.probe import probe_folder

    return {
        "data": {"synth": write_synthetic_dataset, "encode": encode_shards},
        "eval": {"probe": probe_folder, "fvd": fvd, "clipscore": clipscore},
        "checkpoint": {"export": export_checkpoint},
    }


# Lightning warnings that are expected with lvdm's design and only confuse users:
QUIET_WARNINGS = (
    r".*IterableDataset. has .__len__. defined",  # VideoDataModule's length is exact per rank
    r".*module\(s\) in eval mode at the start of training",  # frozen compressors stay in eval
    r".*isinstance\(treespec, LeafSpec\)",  # torch/Lightning version skew, harmless
)


def lightning_cli(args: Optional[list[str]] = None, run: bool = True):
    """The Lightning CLI over lvdm's module and data modules (recipes name the classes)."""
    import warnings

    import lightning as L

    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    from lightning.pytorch.cli import LightningCLI

    return LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "Train and evaluate lvdm models from YAML recipes."},
    )


def main(argv: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(OVERVIEW)
        return
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        lightning_cli(argv)
        return
    if command == "sample":
        _run_function(sample, "lvdm sample", rest)
        return
    if command == "estimate":
        from lvdm.perf.estimate import estimate

        _run_function(estimate, "lvdm estimate", rest)
        return
    groups = _subcommands()
    if command in groups:
        sub = groups[command]
        if not rest or rest[0] in ("-h", "--help") or rest[0] not in sub:
            names = ", ".join(sub)
            print(f"usage: lvdm {command} {{{names}}} [options]\n\nRun `lvdm {command} <name> --help`.")
            if rest and rest[0] not in ("-h", "--help"):
                sys.exit(f"lvdm {command}: unknown command {rest[0]!r}; choose from {names}")
            return
        _run_function(sub[rest[0]], f"lvdm {command} {rest[0]}", rest[1:])
        return
    sys.exit(f"lvdm: unknown command {command!r}; run `lvdm --help`")


if __name__ == "__main__":
    main()
