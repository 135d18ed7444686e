"""Masked-frame conditioning (Open-Sora 1.1+): some latent frames are given, the rest generated.

One boolean ``frame_mask`` ``[B, T]`` over the latent frames says which frames are *given*
(``True``: a conditioning frame, kept clean) and which are generated (``False``). The same
mask serves every task:

* image-to-video: the first frame is given;
* continuation / extension: the first ``k`` frames are given;
* looping: the first and the last frame are given (the same image for a seamless loop);
* random: any frames are given (interpolation, in-filling);
* text-to-video: no frame is given (an all-``False`` row).

How the mask flows (the objectives and samplers in :mod:`lvdm.diffusion.objectives`):

* training: given frames keep their clean latents and timestep 0, the other frames are noised
  at the sampled time; the network receives one timestep per latent frame (``[B, T]``), and
  the loss is the mean over the generated frames only;
* sampling: before every network call the given frames are put back to their clean latents
  (timestep 0), so they stay clean at every step and in the result.

The network is called as ``model_fn(x_t, t, **cond)``; ``t`` is ``[B]`` without a mask and
``[B, T]`` with one (:class:`lvdm.models.dit.DiT` accepts both).

:class:`FrameMasks` draws training masks from the task mix set in a recipe.
"""

from __future__ import annotations

from typing import Optional

import torch


class FrameMasks:
    """Draws one frame mask per training sample from a mix of conditioning tasks.

    Each probability is the chance that a sample gets that task; the remainder is plain
    text-to-video (nothing given). Open-Sora 1.1 trains with such a mix (its ``mask_ratios``),
    so one model does text-to-video, image-to-video, continuation and looping.

    Args:
        image_to_video: probability that the first latent frame is given.
        continuation: probability that the first ``k`` frames are given, ``k`` uniform in
            ``1 .. max_given`` (``max_given``: half the frames, at least 1).
        loop: probability that the first and the last frame are given.
        random: probability that ``k`` frames at random positions are given, ``k`` uniform in
            ``1 .. T - 1``.
    """

    def __init__(self, image_to_video: float = 0.0, continuation: float = 0.0, loop: float = 0.0,
                 random: float = 0.0):
        probs = {"image_to_video": image_to_video, "continuation": continuation, "loop": loop, "random": random}
        for name, p in probs.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"FrameMasks: {name} must be a probability in [0, 1], got {p}")
        if sum(probs.values()) > 1.0 + 1e-9:
            raise ValueError(f"FrameMasks: the probabilities sum to {sum(probs.values()):.3f} > 1: {probs}")
        self.probs = probs

    def __repr__(self) -> str:
        return f"FrameMasks({', '.join(f'{k}={v}' for k, v in self.probs.items())})"

    def __call__(self, batch_size: int, num_frames: int, generator: Optional[torch.Generator] = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """``[batch_size, num_frames]`` boolean mask, ``True`` on given frames. At least one
        frame of every row is generated; a single frame (an image) is never given."""
        mask = torch.zeros(batch_size, num_frames, dtype=torch.bool)
        if num_frames < 2:
            return mask.to(device)
        u = torch.rand(batch_size, generator=generator).tolist()
        edges, total = [], 0.0
        for name, p in self.probs.items():
            total += p
            edges.append((total, name))
        for row, x in enumerate(u):
            task = next((name for edge, name in edges if x < edge), None)
            if task is not None:
                mask[row] = self._task_mask(task, num_frames, generator)
        return mask.to(device)

    @staticmethod
    def _task_mask(task: str, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        row = torch.zeros(n, dtype=torch.bool)
        if task == "image_to_video":
            row[0] = True
        elif task == "continuation":
            k = int(torch.randint(1, max(1, n // 2) + 1, (1,), generator=generator))
            row[:k] = True
        elif task == "loop":
            row[0] = row[-1] = True
        else:  # random
            k = int(torch.randint(1, n, (1,), generator=generator))
            row[torch.randperm(n, generator=generator)[:k]] = True
        return row


def check_frame_mask(frame_mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Validate a mask against latents ``x`` ``[B, C, T, H, W]``; returns it as bool on ``x``'s device."""
    if frame_mask.ndim != 2 or tuple(frame_mask.shape) != (x.shape[0], x.shape[2]):
        raise ValueError(
            f"frame_mask must be [batch, latent frames] = [{x.shape[0]}, {x.shape[2]}], got {tuple(frame_mask.shape)}"
        )
    return frame_mask.to(device=x.device, dtype=torch.bool)


def frame_view(frame_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` → ``[B, 1, T, 1, 1]``: broadcastable against latents."""
    return frame_mask[:, None, :, None, None]


def frame_timesteps(t: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Per-frame timesteps ``[B, T]``: ``t`` ``[B]`` on generated frames, 0 on given frames."""
    return torch.where(frame_mask, torch.zeros_like(t)[:, None], t[:, None].expand(frame_mask.shape))


def keep_given(x: torch.Tensor, x_given: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """``x`` with its given frames replaced by those of ``x_given``."""
    return torch.where(frame_view(frame_mask), x_given.to(x.dtype), x)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, frame_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-sample mean squared error ``[B]`` over the generated frames only (all frames when
    ``frame_mask`` is None)."""
    err = (pred.float() - target.float()) ** 2
    if frame_mask is None:
        return err.flatten(1).mean(dim=1)
    keep = (~frame_view(frame_mask)).to(err.dtype).expand_as(err)
    count = keep.flatten(1).sum(dim=1)
    if bool((count == 0).any()):
        raise ValueError("frame_mask gives every frame of a sample: there is nothing to generate or learn")
    return (err * keep).flatten(1).sum(dim=1) / count
