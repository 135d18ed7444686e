"""The preview (SamplePreview) and periodic evaluation (PeriodicEvaluation) of a LoRA run sample
with the adapter on, and with the EMA of the adapter when an EMA callback averages it."""

import copy

import lightning as L
import torch
from torch.utils.data import DataLoader

from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.dit import DiT
from lvdm.shapes.synthetic import write_synthetic_dataset
from lvdm.text.words import WordTextEncoder
from lvdm.training.callbacks.ema import EMA
from lvdm.training.callbacks.evaluation import PeriodicEvaluation
from lvdm.training.callbacks.lora_training import LoRA
from lvdm.training.callbacks.preview import SamplePreview
from lvdm.training.module import LatentDiffusionModule


def _module():
    torch.manual_seed(0)
    dit = DiT(in_channels=3, patch_size=(1, 8, 8), hidden_size=32, depth=1, num_heads=2,
              conditioning="cross_attn", context_dim=16)
    with torch.no_grad():  # a random base (its zero-initialised output layer would hide the adapter)
        for param in dit.parameters():
            param.normal_(0, 0.2)
    return LatentDiffusionModule(dit, WordTextEncoder(dim=16, max_length=8), RectifiedFlow(num_sampling_steps=2),
                                 sample_shape=(9, 32, 32), optimizer=lambda p: torch.optim.AdamW(p, lr=0.05))


def _recorded(module):
    """Record every ``generate`` call's videos (what the callbacks sample)."""
    calls, generate = [], module.generate

    def record(*args, **kwargs):
        calls.append(generate(*args, **kwargs))
        return calls[-1]

    module.generate = record
    return calls, generate


def test_preview_and_evaluation_sample_with_the_ema_of_the_adapter(tmp_path):
    write_synthetic_dataset(str(tmp_path / "shapes"), num_train=1, num_val=2, num_frames=9)
    module = _module()
    base = copy.deepcopy(module).eval()
    calls, generate = _recorded(module)
    prompt = "a red square moving left"
    ema = EMA(decay=0.9)
    evaluation = PeriodicEvaluation(real=str(tmp_path / "shapes/val-*.tar"), every_n_steps=2, num_videos=2, fvd=False,
                                    num_frames=9, vbench=["dynamic_degree"], vbench_options={"flow": "lucas_kanade"})
    callbacks = [LoRA(rank=2, alpha=4.0), ema, SamplePreview(prompts=[prompt], every_n_steps=2, dirpath=str(tmp_path / "p")),
                 evaluation]
    batch = {"video": torch.rand(2, 3, 9, 32, 32) * 2 - 1, "caption": [prompt] * 2}
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=callbacks, limit_val_batches=0,
                        default_root_dir=tmp_path / "run")
    trainer.fit(module, DataLoader([batch] * 2, batch_size=None))
    evaluated = evaluation._prompts
    assert [step for step, _ in evaluation.history] == [2]
    preview, evaluation = calls  # both at step 2, the EMA updated before them (callbacks run in order)

    module.eval()
    with torch.no_grad():
        raw = generate([prompt], seed=0), generate(evaluated, num_frames=9, seed=0)
        with ema.averaged_weights(module):
            averaged = generate([prompt], seed=0), generate(evaluated, num_frames=9, seed=0)
        without = base.generate([prompt], seed=0), base.generate(evaluated, num_frames=9, seed=0)
    for sampled, want, adapter_only, base_only in zip((preview, evaluation), averaged, raw, without):
        assert torch.equal(sampled, want)  # the EMA of the adapter, on
        assert (sampled - base_only).abs().max() > 1e-2  # the adapter changes the sample (same noise)
        assert (sampled - adapter_only).abs().max() > 1e-4  # the EMA, not the raw adapter
