"""Start a video run from an image run's checkpoint (the image → video phase hand-off)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lvdm.models.inflate import inflate_image_state


def image_checkpoint_state(checkpoint: str, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The module state of a checkpoint written by ``lvdm fit`` (a ``.ckpt`` or a DeepSpeed
    directory, read safely by :func:`lvdm.checkpoint.read_checkpoint`), with the EMA weights in
    place of the raw ones when it has them and ``use_ema``."""
    from lvdm.checkpoint import ema_weights, read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    state = dict(ckpt["state_dict"])
    ema = ema_weights(ckpt) if use_ema else None
    if ema:
        state.update(ema)
    return state


class InflateFromImage(Callback):
    """Initialise the model from an image-phase checkpoint before training starts.

    The denoiser's tubelet patch embedding and output layer are inflated in time
    (:mod:`lvdm.models.inflate`), so the video model starts as the image model on still
    clips; every other weight (the rest of the DiT, the text encoder) is copied. Weights only:
    the optimizer, the step count and the learning-rate schedule start fresh. Skipped when the
    run resumes from its own checkpoint (``--ckpt_path``).

    Args:
        checkpoint: the image phase's ``.ckpt`` (e.g. its ``checkpoints/last.ckpt``) or
            DeepSpeed checkpoint directory.
        use_ema: take the EMA weights stored in the checkpoint when there are any.
    """

    def __init__(self, checkpoint: str, use_ema: bool = True):
        self.checkpoint = checkpoint
        self.use_ema = use_ema

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.ckpt_path is not None:
            return
        image = image_checkpoint_state(self.checkpoint, self.use_ema)
        target = pl_module.state_dict()
        prefix = "denoiser."
        den = {k[len(prefix):]: v for k, v in image.items() if k.startswith(prefix)}
        state = {prefix + k: v for k, v in inflate_image_state(den, pl_module.denoiser).items()}
        for key, ref in target.items():
            if key.startswith(prefix):
                continue
            if key not in image or image[key].shape != ref.shape:
                got = tuple(image[key].shape) if key in image else "missing"
                raise ValueError(f"image checkpoint {self.checkpoint!r}: {key} is {got}, the model needs {tuple(ref.shape)}")
            state[key] = image[key]
        pl_module.load_state_dict(state, strict=True)
        print(f"initialised {len(state)} tensors from the image checkpoint {self.checkpoint} "
              f"({'EMA' if self.use_ema else 'raw'} weights; patch embedding and output inflated to "
              f"{pl_module.denoiser.patch_size[0]} frames)")
