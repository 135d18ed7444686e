import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lvdm.training.callbacks.val_loss import FixedTimestepValLoss
from lvdm.diffusion.objectives import DDPM, RectifiedFlow
from lvdm.models.dit import DiT
from lvdm.training.module import LatentDiffusionModule
from lvdm.text.words import WordTextEncoder


def make_module(objective):
    torch.manual_seed(0)
    dit = DiT(in_channels=3, patch_size=(2, 4, 4), hidden_size=32, depth=2, num_heads=2,
              conditioning="cross_attn", context_dim=16)
    with torch.no_grad():  # off the zero init, so the loss depends on the time
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return LatentDiffusionModule(dit, WordTextEncoder(dim=16, max_length=8), objective, sample_shape=(4, 16, 16))


def batches():
    g = torch.Generator().manual_seed(0)
    return [{"video": torch.rand(3, 3, 4, 16, 16, generator=g) * 2 - 1, "caption": ["a red square"] * 3} for _ in range(2)]


def validate(module, callback, seed):
    torch.manual_seed(seed)  # changes the ordinary val/loss, not the fixed one
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[callback])
    loader = DataLoader(batches(), batch_size=None)
    return trainer.validate(module, loader, verbose=False)[0]


@pytest.mark.parametrize("objective,names", [
    (RectifiedFlow(), ["val/loss_t0.250", "val/loss_t0.500", "val/loss_t0.750"]),
    (DDPM(), ["val/loss_t250", "val/loss_t500", "val/loss_t750"]),
])
def test_fixed_loss_is_reproducible_and_matches_loss_at(objective, names):
    module = make_module(objective)
    callback = FixedTimestepValLoss(num_timesteps=3, seed=7)
    first, second = validate(module, callback, seed=1), validate(module, callback, seed=2)
    assert first["val/loss"] != second["val/loss"]
    for name in names + ["val/loss_fixed"]:
        assert first[name] == second[name], name
    # independent recomputation: same noise stream, loss_at per batch, mean over equal batches
    expected = {name: 0.0 for name in names}
    for index, batch in enumerate(batches()):
        generator = torch.Generator().manual_seed(7 * 1_000_003 + index)
        latents = module.compressor.encode(batch["video"])
        noise = torch.randn(latents.shape, generator=generator)
        ctx, mask = module.encode_text(batch["caption"])
        with torch.no_grad():
            for name, t in zip(names, objective.fixed_timesteps(3)):
                loss = objective.loss_at(lambda x, s: module.denoiser(x, s, ctx, mask), latents, noise, t.expand(3))
                expected[name] += loss.mean().item() / 2
    for name in names:
        assert first[name] == pytest.approx(expected[name], rel=1e-5)
    assert first["val/loss_fixed"] == pytest.approx(sum(expected.values()) / 3, rel=1e-5)
    assert len({round(first[n], 6) for n in names}) == 3  # the grid's losses differ
