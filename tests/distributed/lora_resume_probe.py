"""One rank of a 2-process LoRA run on CPU (gloo), for test_lora_resume.py: started twice by the
test with LOCAL_RANK / RANK / WORLD_SIZE set (Lightning's externally launched mode), so both fits
below run in the same two processes.

``python lora_resume_probe.py <ddp|zero2|zero2_bf16|fsdp2> <out>``: 4 LoRA + EMA steps that checkpoint after
each step (adapter-only checkpoints; DeepSpeed writes its own checkpoint folders), then a new module
resumed from the step-2 checkpoint for 2 more steps. Each rank writes ``<out>/rank<r>.pt``: both
runs' losses, adapters and EMA states. FSDP2 runs without the EMA (which refuses it) and adds a
DDP run of the same 4 steps (``reference``), which FSDP2 must match.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.dit import DiT
from lvdm.text.words import WordTextEncoder
from lvdm.training.callbacks.ema import EMA
from lvdm.training.callbacks.lora_training import LoRA
from lvdm.training.callbacks.run_checkpoint import RunCheckpoint
from lvdm.training.module import LatentDiffusionModule


class Clips(Dataset):
    """Eight fixed clips: two batches of two per rank, so a step-2 checkpoint ends an epoch."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"video": torch.rand(3, 2, 8, 8, generator=g) * 2 - 1, "caption": ["a red square", "a blue disc"][i % 2]}


class Record(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def module() -> LatentDiffusionModule:
    """The tiny module with a random (not zero-initialised) denoiser: the base to adapt."""
    torch.manual_seed(0)
    dit = DiT(in_channels=3, patch_size=(2, 4, 4), hidden_size=32, depth=1, num_heads=2,
              conditioning="cross_attn", context_dim=16)
    with torch.no_grad():
        for param in dit.parameters():
            param.normal_(0, 0.2)
    return LatentDiffusionModule(dit, WordTextEncoder(dim=16, max_length=4), RectifiedFlow(num_sampling_steps=2),
                                 sample_shape=(2, 8, 8), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))


def strategy(name: str):
    if name == "fsdp2":
        from lvdm.distributed.fsdp2 import FSDP2Strategy

        return FSDP2Strategy(process_group_backend="gloo")
    if name == "ddp":
        return L.pytorch.strategies.DDPStrategy(process_group_backend="gloo")
    from lvdm.distributed.cpu_deepspeed import CPUDeepSpeedStrategy
    from lvdm.distributed.precision import DeepSpeedAutocastPrecision

    precision = DeepSpeedAutocastPrecision("bf16-mixed") if name == "zero2_bf16" else None  # strategies/zero2.yaml's
    return CPUDeepSpeedStrategy(stage=2, logging_batch_size_per_gpu=1, precision_plugin=precision)


def fit(name: str, root: Path, steps: int, extra: list, ckpt_path: str | None = None) -> dict:
    model, record = module(), Record()
    ema = EMA(decay=0.9) if name != "fsdp2" else None  # the EMA refuses sharded parameters
    L.seed_everything(0)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=2, strategy=strategy(name), logger=False,
                        default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[LoRA(rank=2, alpha=4.0), *([ema] if ema else []), *extra, record],
                        use_distributed_sampler=True)
    trainer.fit(model, DataLoader(Clips(), batch_size=2), ckpt_path=ckpt_path)
    adapter = {n: whole(p).float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return {"losses": record.losses, "adapter": adapter, "step": trainer.global_step,
            "ema": {k: v.clone() for k, v in ema.shadow.items()} if ema else {}, "ema_updates": ema.num_updates if ema else 0}


def whole(param: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value (an FSDP2 shard gathered: a collective)."""
    from torch.distributed.tensor import DTensor

    return param.full_tensor().detach() if isinstance(param, DTensor) else param.detach()


def main(name: str, out: Path) -> None:
    saves = RunCheckpoint(dirpath=str(out / "ckpt"), every_n_train_steps=1, save_top_k=-1, filename="{step}")
    straight = fit(name, out / "a", 4, [saves])
    resumed = fit(name, out / "b", 4, [], ckpt_path=str(out / "ckpt" / "step=2.ckpt"))
    records = {"straight": straight, "resumed": resumed}
    if name == "fsdp2":
        records["reference"] = fit("ddp", out / "c", 4, [])
    torch.save(records, out / f"rank{torch.distributed.get_rank()}.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
