"""EMA callback: the update rule against a float64 reference, one update per optimizer step."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lvdm.training.callbacks.ema import EMA


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.net(x).pow(2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # Lightning calls the module's hook after the callbacks': record the weights after each step.
        self.seen.append((self.trainer.global_step, {n: p.detach().double().clone() for n, p in self.named_parameters()}))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_one_update_per_optimizer_step_under_gradient_accumulation(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    start = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    ema = EMA(decay=0.5, warmup=False)
    trainer = L.Trainer(max_steps=3, accumulate_grad_batches=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, callbacks=[ema], default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(12, 4)), batch_size=2))
    assert ema.num_updates == 3
    # Reference: average the weights seen after each optimizer step (the last micro-batch of each).
    after_step = {}
    for step, weights in model.seen:
        after_step[step] = weights
    assert sorted(after_step) == [0, 1, 2, 3]
    ref = dict(start)
    for step in (1, 2, 3):
        ref = {n: 0.5 * ref[n] + 0.5 * after_step[step][n] for n in ref}
    for n, v in ema.shadow.items():
        torch.testing.assert_close(v.double(), ref[n], rtol=1e-6, atol=1e-6)  # float32 shadow, weights < 1
