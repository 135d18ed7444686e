import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lvdm.training.callbacks.ema import EMA
from lvdm.checkpoints.load import load_ema_weights
from lvdm.training.callbacks.preview import SamplePreview
from lvdm.diffusion.objectives import DDPM, RectifiedFlow
from lvdm.models.dit import DiT
from lvdm.training.module import LatentDiffusionModule, WarmupCosineLR
from lvdm.text.words import WordTextEncoder


def make_module(objective=None, **kw):
    torch.manual_seed(0)
    dit = DiT(in_channels=3, patch_size=(2, 4, 4), hidden_size=32, depth=2, num_heads=2,
              conditioning="cross_attn", context_dim=16)
    text = WordTextEncoder(dim=16, max_length=8)
    return LatentDiffusionModule(dit, text, objective or RectifiedFlow(num_sampling_steps=3), sample_shape=(4, 16, 16), **kw)


class Batches(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i % 2)
        return {"video": torch.rand(3, 4, 16, 16, generator=g) * 2 - 1, "caption": ["a red square", "a blue circle"][i % 2]}


def collate(items):
    return {"video": torch.stack([x["video"] for x in items]), "caption": [x["caption"] for x in items]}


@pytest.mark.parametrize("objective", [RectifiedFlow(num_sampling_steps=3), DDPM(num_sampling_steps=3)])
def test_fit_with_ema_then_generate(tmp_path, objective):
    module = make_module(objective, lr_scheduler=lambda opt: WarmupCosineLR(opt, warmup_steps=2, total_steps=6))
    ema = EMA(decay=0.9)
    preview = SamplePreview(prompts=["a red square"], every_n_steps=4, num_steps=2, dirpath=str(tmp_path / "prev"))
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        callbacks=[ema, preview], default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(module, DataLoader(Batches(), batch_size=4, collate_fn=collate))
    assert ema.num_updates == 6
    # previews at step 4 and at the end of training (step 6), with their prompts
    assert [p.parent.name for p in preview.written] == ["step_0000004", "step_0000006"]
    assert all(p.stat().st_size > 0 for p in preview.written)
    assert (tmp_path / "prev/step_0000004/prompts.txt").read_text() == "a red square\n"
    # the EMA differs from the live weights and round-trips through a checkpoint dict
    name = "denoiser.final_layer.linear.weight"
    live = dict(module.named_parameters())[name].detach().clone()
    assert not torch.allclose(ema.shadow[name], live)
    ckpt = {"callbacks": {"EMA": ema.state_dict()}}
    assert load_ema_weights(ckpt, module)
    torch.testing.assert_close(dict(module.named_parameters())[name].detach(), ema.shadow[name])
    video = module.generate(["a red square", "a blue circle"], seed=3)
    assert video.shape == (2, 3, 4, 16, 16) and video.abs().max() <= 1
    # a prompt's video depends on seed + its index only, not on the batch it is in
    again = module.generate(["a red square"], seed=3)
    torch.testing.assert_close(again[0], video[0])


def test_caption_dropout_and_part_checks():
    module = make_module(caption_dropout=1.0)
    module.train()
    assert module.drop_captions(["a", "b"]) == ["", ""]
    module.eval()
    assert module.drop_captions(["a", "b"]) == ["a", "b"]
    dit = DiT(in_channels=3, patch_size=2, hidden_size=32, depth=1, num_heads=2, context_dim=8)
    with pytest.raises(ValueError, match="context_dim"):
        LatentDiffusionModule(dit, WordTextEncoder(dim=16))


def test_warmup_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosineLR(opt, warmup_steps=4, total_steps=12, min_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.25) and lrs[3] == pytest.approx(1.0)
    assert lrs[12] == pytest.approx(0.1) and lrs[13] == pytest.approx(0.1)


def test_ema_swaps_averaged_weights_in_for_validation_and_back():
    module = make_module()
    ema = EMA(decay=0.5)
    ema.on_fit_start(None, module)
    live = {n: p.detach().clone() for n, p in module.named_parameters()}
    ema.shadow = {n: t + 1.0 for n, t in ema.shadow.items()}
    ema.on_validation_start(None, module)
    for n, p in module.named_parameters():
        torch.testing.assert_close(p.detach(), live[n] + 1.0)
    ema.on_validation_end(None, module)
    for n, p in module.named_parameters():
        torch.testing.assert_close(p.detach(), live[n])
