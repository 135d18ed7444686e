"""LoRA fine-tuning of a trained backbone: adapters in, base frozen, adapter-only checkpoints.

:class:`LoRA` wraps the target linears of the LightningModule's ``denoiser`` (or another part)
with peft LoRA layers in ``setup``, which Lightning runs before ``configure_optimizers``, so
the optimizer sees the adapter parameters alone; the run's ``InitFrom`` callbacks load the base
first, in every stage (``lvdm validate`` / ``test`` of an adapter checkpoint need the base too).
Checkpoints keep only the adapter tensors (the optimizer, step, schedule and callback states as
usual; under DeepSpeed the strategy's ``exclude_frozen_parameters`` is switched on to the same
end); resuming (``--ckpt_path``) loads them into the base the run builds again (the recipe's
``InitFrom`` source), so the continued run equals an uninterrupted one. The
:class:`~lvdm.training.callbacks.ema.EMA` callback averages what trains, here the adapter.
:mod:`lvdm.finetune.adapter_files` loads, merges and exports such checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from lvdm.finetune.adapter_files import STATE_KEY, check_adapter_keys
from lvdm.finetune.block_swap import BlockSwap, enable_block_swap, swap_blocks
from lvdm.finetune.fp8 import store_frozen_fp8
from lvdm.finetune.lora import LoraInit, apply_lora, base_fingerprint, is_adapter_key
from lvdm.finetune.lora_files import load_into_adapter
from lvdm.text.base import PretrainedTextEncoder
from lvdm.training.callbacks.warm_start import InitFrom

_SETTINGS = ("rank", "alpha", "module", "targets", "text_encoder")


def _base_spec(init: InitFrom) -> dict[str, Any]:
    """An ``InitFrom`` callback's arguments, its source path made absolute (a hub id stays as given)."""
    source = str(Path(init.source).resolve()) if Path(init.source).exists() else init.source
    return {"source": source, "weights": init.weights, "strict": init.strict, "module": init.module,
            "prefix": init.prefix, "inflate_time": init.inflate_time,
            "allow_position_change": init.allow_position_change}


class LoRA(Callback):
    """Train LoRA adapters on a frozen model part; checkpoints hold the adapter only.

    Args:
        rank: adapter rank ``r``.
        alpha: scale numerator: the update is ``(alpha / rank) · B A`` (None: ``rank``).
        dropout: dropout on the adapter input in training.
        targets: the linears to adapt: None for the backbone's declared ``lora_targets``, or
            glob patterns over the part's module names (``blocks.*.attns.*.qkv``); a pattern
            that matches nothing is an error naming the available names.
        module: the LightningModule part to adapt (``denoiser``; a trainable ``text_encoder``
            with ``targets`` given; the pretrained T5 / CLIP encoders run without gradients and
            are refused).
        init: ``default`` (peft's: B zero, the run starts at the base model) or ``gaussian``.
        fp8_base: store the frozen linears of the part's blocks in FP8 with a per-tensor scale,
            computed in the input's dtype (:mod:`lvdm.finetune.fp8`): about half the bytes of bf16.
        block_swap: keep the frozen weights of this many blocks (from the first) on the host and
            move each to the device only while it runs (:mod:`lvdm.finetune.block_swap`); 0: off.
        from_file: continue training an existing LoRA: a ``.safetensors`` in diffusers', the
            original model's or kohya's layout (:mod:`lvdm.finetune.lora_files`, e.g. from
            ``lvdm lora export``) whose modules are exactly the targets, of this ``rank``; the
            adapter starts at its update (its alpha / rank folded into B). None: ``init``.
        text_encoder_targets: also adapt the text encoder (next to ``module``): glob patterns
            over its module names (T5: ``model.encoder.block.*.layer.0.SelfAttention.[qkvo]``);
            None: off. A pretrained T5 / CLIP then runs with gradients through its adapter alone;
            batches of cached text embeddings (``lvdm data encode --text_encoder``) never run the
            encoder and are refused. No dropout there (the frozen encoder runs in eval mode).
        text_encoder_rank: its adapter rank (None: ``rank``).
        text_encoder_alpha: its scale numerator (None: ``text_encoder_rank``).
    """

    def __init__(self, rank: int = 16, alpha: Optional[float] = None, dropout: float = 0.0,
                 targets: Union[str, list[str], None] = None, module: str = "denoiser", init: LoraInit = "default",
                 fp8_base: bool = False, block_swap: int = 0, from_file: Optional[str] = None,
                 text_encoder_targets: Union[str, list[str], None] = None, text_encoder_rank: Optional[int] = None,
                 text_encoder_alpha: Optional[float] = None):
        self.rank, self.alpha, self.dropout = rank, float(rank if alpha is None else alpha), dropout
        self.targets, self.module, self.init, self.from_file = targets, module, init, from_file
        self.fp8_base, self.block_swap = fp8_base, block_swap
        self.text_encoder_targets, self.text_encoder_rank = text_encoder_targets, text_encoder_rank or rank
        self.text_encoder_alpha = float(self.text_encoder_rank if text_encoder_alpha is None else text_encoder_alpha)
        self.text_adapted: list[str] | None = None  # the text encoder's adapted module names
        self.swap: BlockSwap | None = None
        self.adapted: list[str] | None = None  # module names, once applied
        self.base: list[dict[str, Any]] = []
        self.fingerprint = ""  # of the base weights (lvdm.finetune.lora.base_fingerprint)

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.adapted is not None:
            return
        part = pl_module.get_submodule(self.module)
        if getattr(part, "trainable", True) is False:  # a pretrained T5 / CLIP runs under no_grad: an adapter would never train
            raise ValueError(f"LoRA module {self.module!r}: {type(part).__name__} runs frozen (no gradient reaches it); "
                             "adapt the denoiser, and a pretrained text encoder with text_encoder_targets")
        inits = [c for c in trainer.callbacks if isinstance(c, InitFrom)]
        for init in inits:  # the base weights go in under their own names, before the layers are wrapped;
            init.setup(trainer, pl_module, "fit")  # in validate / test too: the checkpoint holds no base
        self.base = [_base_spec(init) for init in inits]
        self.fingerprint = base_fingerprint(pl_module)
        self.adapted = apply_lora(part, self.rank, self.alpha, self.dropout, self.targets, self.init)
        if self.from_file:  # a resumed run then loads the checkpoint's adapter over it
            load_into_adapter(part, self.from_file)
        parts = (f"{self.module}.", *(("text_encoder.",) if self._adapt_text_encoder(pl_module) else ()))
        for name, param in pl_module.named_parameters():
            param.requires_grad_(name.startswith(parts) and is_adapter_key(name))
        if self.block_swap:
            swap_blocks(part, self.block_swap)  # a count over the number of blocks fails here, before any step
        if self.fp8_base:
            store_frozen_fp8(part)
        pl_module.strict_loading = False  # a checkpoint holds the adapter only: on_load_checkpoint checks its keys
        strategy = getattr(trainer, "strategy", None)
        if hasattr(strategy, "exclude_frozen_parameters"):  # DeepSpeed writes its own module files: adapter only too
            strategy.exclude_frozen_parameters = True
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        total = sum(p.numel() for p in pl_module.parameters())
        rank_zero_only(print)(f"LoRA rank {self.rank} alpha {self.alpha:g} on {len(self.adapted)} linears of "
                              f"{self.module}: {trainable:,} trainable of {total:,} parameters "
                              f"({100 * trainable / total:.2f} %)", flush=True)

    def _adapt_text_encoder(self, pl_module: L.LightningModule) -> bool:
        """Add the text encoder's adapter when ``text_encoder_targets`` asks for one."""
        if self.text_encoder_targets is None:
            return False
        encoder = getattr(pl_module, "text_encoder", None)
        if self.module == "text_encoder" or not isinstance(encoder, torch.nn.Module):
            raise ValueError(f"LoRA text_encoder_targets needs a text_encoder part next to module {self.module!r}; "
                             f"{type(pl_module).__name__} has {type(encoder).__name__}")
        pretrained = any(isinstance(m, PretrainedTextEncoder) for m in encoder.modules())  # they encode with an adapter's gradients
        if not (pretrained or getattr(encoder, "trainable", True)):
            raise ValueError(f"LoRA text_encoder_targets: {type(encoder).__name__} runs frozen without gradients")
        self.text_adapted = apply_lora(encoder, self.text_encoder_rank, self.text_encoder_alpha, 0.0,
                                       self.text_encoder_targets, self.init)
        return True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._refuse_cached_text(batch)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._refuse_cached_text(batch)  # the cache holds the base encoder's embeddings, not the adapted one's

    def _refuse_cached_text(self, batch: Any) -> None:
        if self.text_adapted and isinstance(batch, dict) and "text" in batch:
            raise ValueError("LoRA text_encoder_targets: this batch holds cached text embeddings ('text', from "
                             "lvdm data encode --text_encoder), so the text encoder never runs and its adapter would be "
                             "left out; use shards without cached text, or drop text_encoder_targets")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_swap(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_swap(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_swap(trainer, pl_module)

    def _start_swap(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Block swap starts once the strategy has moved the model to its device (after ``setup``)."""
        if self.block_swap and self.swap is None:
            self.swap = enable_block_swap(pl_module.get_submodule(self.module), self.block_swap,
                                          trainer.strategy.root_device)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if is_adapter_key(k)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if "state_dict" in checkpoint:  # DeepSpeed loads its own module files (none in its client state)
            check_adapter_keys(pl_module, checkpoint["state_dict"], "the checkpoint to resume (--ckpt_path)")

    def state_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "module": self.module,
                "targets": list(self.adapted or []), "init": self.init, "from_file": self.from_file, "base": self.base,
                "base_fingerprint": self.fingerprint, "text_encoder": self._text_encoder_settings()}

    def _text_encoder_settings(self) -> Optional[dict[str, Any]]:
        if self.text_encoder_targets is None:
            return None
        return {"rank": self.text_encoder_rank, "alpha": self.text_encoder_alpha, "targets": list(self.text_adapted or [])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        mine = self.state_dict()
        differ = [k for k in _SETTINGS if state_dict.get(k) != mine[k]]
        if differ:
            raise ValueError("the checkpoint's LoRA settings differ from this run's: "
                             + ", ".join(f"{k} {state_dict.get(k)!r} vs {mine[k]!r}" for k in differ))
        if state_dict.get("base_fingerprint") not in (None, mine["base_fingerprint"]):
            raise ValueError(f"this run's base weights (fingerprint {mine['base_fingerprint']}) differ from those the "
                             f"checkpoint's adapter was trained on ({state_dict['base_fingerprint']}); was the InitFrom "
                             f"source {[b['source'] for b in self.base]} overwritten or changed?")
