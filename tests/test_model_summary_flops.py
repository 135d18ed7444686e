"""The model summary printed at the start of fit reports the denoiser's FLOPs (it printed
``Total FLOPs: 0``: Lightning counts only a ``forward`` of ``example_input_array``)."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from torch.utils.data import DataLoader

from lvdm.training.callbacks.summary import DenoiserFlopsSummary, FlopsModelSummary, FlopsRichModelSummary, flops_summaries
from lvdm.models.dit import DiT
from lvdm.models.stdit import STDiT
from lvdm.training.module import LatentDiffusionModule
from lvdm.perf.step_flops import count_flops, dit_forward_flops
from lvdm.text.words import WordTextEncoder


def make_module(denoiser):
    torch.manual_seed(0)
    return LatentDiffusionModule(denoiser, WordTextEncoder(dim=16, max_length=8), sample_shape=(4, 16, 16))


def dit():
    return DiT(in_channels=3, patch_size=(2, 4, 4), hidden_size=32, depth=2, num_heads=2,
               conditioning="cross_attn", context_dim=16)


class Clips(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"video": torch.zeros(3, 4, 16, 16), "caption": "a red square"}


def collate(items):
    return {"video": torch.stack([x["video"] for x in items]), "caption": [x["caption"] for x in items]}


def test_summary_counts_the_denoiser_forward():
    module = make_module(dit())
    summary = DenoiserFlopsSummary(module)
    expected = dit_forward_flops(module.denoiser, (4, 16, 16), text_len=8).total  # analytic, pixels: latent = video
    assert summary.total_flops == expected > 0
    flops = dict(zip(summary.layer_names, (sum(c.values()) for c in summary.flop_counts.values())))
    assert flops["denoiser"] == expected and flops["text_encoder"] == 0


def test_summary_meta_count_equals_a_real_forward():
    """STDiT has no analytic formula: the meta-tensor count equals the counter on a real forward."""
    module = make_module(STDiT(in_channels=3, hidden_size=32, depth=2, num_heads=2, context_dim=16, latent_scale=1))
    x, ctx, mask = torch.randn(1, 3, 4, 16, 16), torch.randn(1, 8, 16), torch.ones(1, 8, dtype=torch.bool)
    real = count_flops(module.denoiser, x, torch.zeros(1), context=ctx, context_mask=mask)
    assert DenoiserFlopsSummary(module).total_flops == real > 0


@pytest.mark.parametrize("given,replaced", [(ModelSummary(max_depth=2), FlopsModelSummary),
                                            (RichModelSummary(), FlopsRichModelSummary)])
def test_lightning_summaries_are_swapped_keeping_their_settings(given, replaced):
    [swapped] = flops_summaries([given, L.pytorch.callbacks.Timer()])
    assert type(swapped) is replaced and swapped._max_depth == given._max_depth
    assert flops_summaries([FlopsModelSummary()]) == []


def test_fit_prints_the_flops(tmp_path, caplog):
    module = make_module(dit())
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[ModelSummary()], default_root_dir=tmp_path)
    with caplog.at_level("INFO", logger="lightning.pytorch.callbacks.model_summary"):
        trainer.fit(module, DataLoader(Clips(), batch_size=2, collate_fn=collate))
    assert any(type(c) is FlopsModelSummary for c in trainer.callbacks)
    expected = get_human_readable_count(dit_forward_flops(module.denoiser, (4, 16, 16), text_len=8).total)
    assert f"{expected:<10}Total Flops" in caplog.text and "0         Total Flops" not in caplog.text
