"""Lightning's model summary with the FLOPs filled in.

Lightning counts FLOPs by running ``example_input_array`` through the LightningModule's
``forward`` under ``torch.utils.flop_counter.FlopCounterMode``; a diffusion module has no such
forward (it trains through ``training_step``), so every summary printed ``Total FLOPs: 0``.
These callbacks print the FLOPs of one denoiser forward on one sample of the module's
``sample_shape`` with ``max_length`` text tokens, counted by the same counter on ``meta``
tensors (:func:`lvdm.perf.step_flops.meta_forward_flops`: nothing runs, nothing is allocated), in
the denoiser's row and the total. :class:`~lvdm.training.module.LatentDiffusionModule` puts them in
place of Lightning's own summary callbacks (``configure_callbacks``).
"""

from __future__ import annotations

import logging
from typing import Optional

from lightning.pytorch.callbacks import ModelSummary, RichModelSummary
from lightning.pytorch.utilities.model_summary import ModelSummary as Summary

log = logging.getLogger(__name__)


def sample_forward_flops(module) -> Optional[int]:
    """FLOPs of ``module.denoiser`` on one sample of ``module.sample_shape`` (None when the
    denoiser cannot run on meta tensors; the reason is logged at DEBUG level)."""
    from torch.distributed.fsdp import FSDPModule

    from lvdm.perf.step_flops import meta_forward_flops

    if any(isinstance(m, FSDPModule) for m in module.denoiser.modules()):  # strategies/fsdp2.yaml: a meta forward
        log.debug("model summary: denoiser FLOPs not counted: it is sharded by FSDP2")  # would start FSDP2's lazy
        return None  # initialisation on meta tensors, fail, and leave it half done for the first real forward
    try:
        latent = module.compressor.latent_shape(*module.sample_shape)
        text = module.text_encoder
        return meta_forward_flops(module.denoiser, latent, text.max_length, text.dim)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
        log.debug("model summary: denoiser FLOPs not counted: %s: %s", type(exc).__name__, exc)
        return None


class DenoiserFlopsSummary(Summary):
    """Lightning's summary table whose FLOPs are :func:`sample_forward_flops`, in the
    ``denoiser`` row and the total (Lightning's count where that is None)."""

    def __init__(self, model, max_depth: int = 1) -> None:
        self._denoiser_flops = sample_forward_flops(model)
        super().__init__(model, max_depth)

    @property
    def total_flops(self) -> int:
        return super().total_flops if self._denoiser_flops is None else self._denoiser_flops

    @property
    def flop_counts(self) -> dict:
        if self._denoiser_flops is None:
            return super().flop_counts
        return {name: {"forward": self._denoiser_flops} if name == "denoiser" else {} for name in self.layer_names}


class _DenoiserFlops:
    def _summary(self, trainer, pl_module):
        summary = super()._summary(trainer, pl_module)
        if type(summary) is not Summary or pl_module.example_input_array is not None:
            return summary  # DeepSpeed ZeRO-3's summary, or a module Lightning can count itself
        return DenoiserFlopsSummary(pl_module, max_depth=self._max_depth)


class FlopsModelSummary(_DenoiserFlops, ModelSummary):
    """:class:`~lightning.pytorch.callbacks.ModelSummary` with the denoiser's FLOPs."""


class FlopsRichModelSummary(_DenoiserFlops, RichModelSummary):
    """:class:`~lightning.pytorch.callbacks.RichModelSummary` with the denoiser's FLOPs."""


def flops_summaries(callbacks) -> list:
    """Replacements (same settings) for Lightning's own summary callbacks among ``callbacks``,
    for ``configure_callbacks``: Lightning swaps a callback for one of a subclass."""
    swap = {ModelSummary: FlopsModelSummary, RichModelSummary: FlopsRichModelSummary}
    return [swap[type(c)](max_depth=c._max_depth, **c._summarize_kwargs) for c in callbacks if type(c) in swap]
