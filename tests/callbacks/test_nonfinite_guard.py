"""NonFiniteGuard: a NaN batch leaves weights and optimizer state bit-identical; too many stop the
run with the last finite state saved; non-finite weights are never checkpointed; a loss that
explodes while staying finite is skipped and stops the run; noisy training is not stopped."""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lvdm.training.callbacks.nonfinite import (
    NonFiniteGuard,
    NonFiniteTrainingError,
    TrainingDivergedError,
)


class Tiny(L.LightningModule):
    """Linear regression whose batch ``bad`` gives a NaN loss (``nan``) or, with a finite loss,
    a NaN gradient (``grad``: d sqrt(0·w)/dw = 0·inf)."""

    def __init__(self, bad=(), kind="nan"):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.bad, self.kind = set(bad), kind
        self.snapshots = {}

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = self.net(x).pow(2).mean()
        if batch_idx in self.bad:
            if self.kind == "nan":
                loss = loss * float("nan")
            else:
                loss = loss + torch.sqrt(self.net.weight.sum() * 0.0)
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        opt = self.trainer.optimizers[0]
        self.snapshots[batch_idx] = (copy.deepcopy(self.state_dict()), copy.deepcopy(opt.state_dict()))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.1)


def fit(module, steps, tmp_path, callbacks=(), **kw):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        callbacks=list(callbacks), default_root_dir=tmp_path, enable_progress_bar=False,
                        enable_model_summary=False, **kw)
    torch.manual_seed(0)
    trainer.fit(module, DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4))
    return trainer


def assert_identical(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), (a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_identical(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_identical(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("kind", ["nan", "grad"])
def test_nonfinite_batch_leaves_weights_and_optimizer_state_bit_identical(tmp_path, kind):
    module = Tiny(bad={3}, kind=kind)
    guard = NonFiniteGuard(max_consecutive=2)
    fit(module, 6, tmp_path, [guard], gradient_clip_val=1.0)
    before, after = module.snapshots[3], module.snapshots[4]
    assert_identical(before[0], after[0])  # weights
    assert_identical(before[1], after[1])  # AdamW moments, step counts, param groups
    assert guard.skipped == 1 and guard.consecutive == 0
    # the other steps did train, and everything stayed finite
    assert not torch.equal(module.snapshots[2][0]["net.weight"], module.snapshots[3][0]["net.weight"])
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_without_guard_one_nan_batch_spreads(tmp_path):
    """The failure the guard prevents (what happens on a plain Trainer)."""
    module = Tiny(bad={3})
    fit(module, 6, tmp_path)
    assert not torch.isfinite(module.net.weight).all()


def test_too_many_in_a_row_stop_with_the_last_finite_state_saved(tmp_path):
    module = Tiny(bad=set(range(2, 100)))
    with pytest.raises(NonFiniteTrainingError, match="3 optimizer steps in a row") as err:
        fit(module, 50, tmp_path, [NonFiniteGuard(max_consecutive=2)])
    saved = tmp_path / "nonfinite-stop.ckpt"
    assert str(saved) in str(err.value)
    ckpt = torch.load(saved, weights_only=True)
    assert_identical(ckpt["state_dict"], module.snapshots[2][0])  # the state before the first bad batch
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_checkpoint_with_nonfinite_weights_is_refused(tmp_path):
    module = Tiny()
    trainer = fit(module, 1, tmp_path, [NonFiniteGuard()])
    with torch.no_grad():
        module.net.weight[0, 1] = float("inf")
    with pytest.raises(NonFiniteTrainingError, match="net.weight"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


def test_learning_rate_1e4_stops_instead_of_training_on(tmp_path):
    """The lvdm module carries a guard by default: lr=1e4 goes non-finite and the run stops early."""
    from lvdm.diffusion.objectives import RectifiedFlow
    from lvdm.models.dit import DiT
    from lvdm.training.module import LatentDiffusionModule
    from lvdm.text.words import WordTextEncoder

    torch.manual_seed(0)
    dit = DiT(in_channels=3, patch_size=(2, 4, 4), hidden_size=32, depth=2, num_heads=2,
              conditioning="cross_attn", context_dim=16)
    module = LatentDiffusionModule(dit, WordTextEncoder(dim=16, max_length=8), RectifiedFlow(),
                                   optimizer=lambda p: torch.optim.AdamW(p, lr=1e4), sample_shape=(4, 16, 16))
    videos = torch.rand(64, 3, 4, 16, 16) * 2 - 1
    data = DataLoader(list(range(64)), batch_size=4,
                      collate_fn=lambda idx: {"video": videos[idx], "caption": ["a red square"] * len(idx)})
    trainer = L.Trainer(max_steps=200, accelerator="cpu", logger=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0)
    with pytest.raises(NonFiniteTrainingError):
        trainer.fit(module, data)
    assert trainer.global_step < 200
    assert any(isinstance(c, NonFiniteGuard) for c in trainer.callbacks)
    (saved,) = tmp_path.glob("*-stop.ckpt")  # the loss explodes (diverged-stop) before it is NaN
    ckpt = torch.load(saved, weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


class Exploding(Tiny):
    """From batch ``start`` on, the loss is 1e20 times larger: finite, as are its gradients."""

    def __init__(self, start):
        super().__init__()
        self.start = start

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 1e20 if batch_idx >= self.start else loss


def test_exploding_finite_loss_is_skipped_then_stops_with_the_state_before_it(tmp_path):
    module = Exploding(start=4)
    with pytest.raises(TrainingDivergedError, match="above 100 x its running median") as err:
        fit(module, 50, tmp_path, [NonFiniteGuard(max_consecutive=2)])
    saved = tmp_path / "diverged-stop.ckpt"
    assert str(saved) in str(err.value) and "3 optimizer steps in a row (up to step 6)" in str(err.value)
    assert_identical(torch.load(saved, weights_only=True)["state_dict"], module.snapshots[4][0])
    assert_identical(module.snapshots[4], module.snapshots[6])  # the spiking steps changed nothing


def test_adam_at_lr_1e4_diverges_finitely_and_is_stopped(tmp_path):
    """Finding 7: Adam's steps are about lr each, so at lr=1e4 the weights and the loss grow
    without ever becoming inf: the non-finite checks alone let it train on."""
    class Regression(Tiny):
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e4, weight_decay=0.0)

    unguarded = Regression()
    fit(unguarded, 60, tmp_path / "off", [NonFiniteGuard(spike_factor=None)])
    assert all(torch.isfinite(p).all() for p in unguarded.parameters())
    assert unguarded.net.weight.abs().max() > 1e3  # from about 0.5: diverged, finite, "exit 0"
    with pytest.raises(TrainingDivergedError):
        fit(Regression(), 60, tmp_path / "on", [NonFiniteGuard()])


class Noisy(Tiny):
    """Noisy regression that learns: 4 samples a batch with noisy targets, and on top a loss
    scaled by a seeded log-normal factor (sigma 0.5) each step."""

    def __init__(self):
        super().__init__()
        self.noise = torch.Generator().manual_seed(1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        target = x.sum(1, keepdim=True) + 0.3 * torch.randn(len(x), 1, generator=self.noise)
        scale = torch.exp(0.5 * torch.randn((), generator=self.noise))
        return (self.net(x) - target).pow(2).mean() * scale


def test_noisy_training_is_not_stopped_nor_skipped(tmp_path):
    guard = NonFiniteGuard()
    module = Noisy()
    fit(module, 300, tmp_path, [guard])
    assert guard.skipped == 0 and len(guard.losses) == 100
    assert max(guard.losses) > 3 * min(guard.losses)  # it is noisy


def test_a_legitimate_high_noise_batch_is_not_a_spike():
    """The demo's video phase: a well-trained shapes model's loss sat near 0.059 and one batch of
    high-noise timesteps gave 0.905 (15x). The default factor keeps it; a divergence (100x+) is not."""
    guard = NonFiniteGuard()
    guard.losses.extend([0.0586] * 100)
    assert guard._spike(0.905) is None and guard._spike(0.0586 * 101) is not None


def test_running_median_survives_a_resume():
    guard = NonFiniteGuard(spike_window=3, spike_factor=10)
    guard.losses.extend([1.0, 2.0, 3.0, 4.0])
    other = NonFiniteGuard(spike_window=3, spike_factor=10)
    other.load_state_dict(guard.state_dict())
    assert list(other.losses) == [2.0, 3.0, 4.0] and other._spike(31.0) and not other._spike(29.0)
