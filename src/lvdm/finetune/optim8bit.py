"""8-bit AdamW states through bitsandbytes (``pip install bitsandbytes``; CPU and CUDA).

:class:`AdamW8bit` is bitsandbytes' blockwise 8-bit AdamW under an lvdm class path, so a recipe
names it as any optimizer (``optimizer: class_path: lvdm.finetune.optim8bit.AdamW8bit``) and a
checkpoint's stored recipe, which builds lvdm's and torch's classes only, rebuilds it. Its
states are plain tensors (``uint8`` moments, float32 block maxima and quantisation maps), so a
checkpoint holding them loads with ``torch.load(weights_only=True)`` and a resumed run continues
exactly. A tensor under ``min_8bit_size`` values keeps float32 moments (bitsandbytes' rule); the
bytes are counted in :func:`lvdm.finetune.memory.optimizer_state_bytes`.

torchao's ``AdamW8bit`` also runs on the CPU but keeps its states as a tensor subclass that
``weights_only`` loading refuses, so resuming would need trusting the file: it is not offered.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

try:
    from bitsandbytes.optim import AdamW8bit as _Base
except ImportError:  # the class below then refuses to build, naming the package
    _Base = None


class AdamW8bit(_Base or torch.optim.Optimizer):
    """AdamW with 8-bit blockwise-quantised moments (bitsandbytes).

    Args:
        params: the parameters (or parameter groups) to optimise.
        lr: learning rate.
        betas: the moments' decay rates.
        eps: the denominator's epsilon.
        weight_decay: decoupled weight decay.
        min_8bit_size: tensors with fewer values keep float32 moments.
    """

    def __init__(self, params, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, min_8bit_size: int = 4096):
        if _Base is None:
            raise ImportError("lvdm.finetune.optim8bit.AdamW8bit needs bitsandbytes: pip install 'lvdm[lowmem]' "
                              "(or pip install bitsandbytes), or use torch.optim.AdamW")
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         min_8bit_size=min_8bit_size)
