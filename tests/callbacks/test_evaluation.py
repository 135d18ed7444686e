import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lvdm.training.callbacks.evaluation import PeriodicEvaluation
from lvdm.shapes.synthetic import write_synthetic_dataset
from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.dit import DiT
from lvdm.training.module import LatentDiffusionModule
from lvdm.text.words import WordTextEncoder


def test_periodic_fvd(tmp_path):
    write_synthetic_dataset(str(tmp_path / "shapes"), num_train=1, num_val=2, num_frames=9)
    torch.manual_seed(0)
    dit = DiT(in_channels=3, patch_size=(1, 8, 8), hidden_size=32, depth=1, num_heads=2,
              conditioning="cross_attn", context_dim=16)
    module = LatentDiffusionModule(dit, WordTextEncoder(dim=16, max_length=8), RectifiedFlow(num_sampling_steps=2),
                                   sample_shape=(9, 32, 32))
    callback = PeriodicEvaluation(real=str(tmp_path / "shapes/val-*.tar"), every_n_steps=2, num_videos=2)
    batch = {"video": torch.rand(2, 3, 9, 32, 32) * 2 - 1, "caption": ["a red square moving left"] * 2}
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[callback], limit_val_batches=0,
                        default_root_dir=tmp_path / "run")
    trainer.fit(module, DataLoader([batch] * 2, batch_size=None))
    assert [step for step, _ in callback.history] == [2]
    results = callback.history[0][1]
    assert set(results) == {"eval/fvd"}
    assert trainer.callback_metrics["eval/fvd"].item() == pytest.approx(results["eval/fvd"])
    # the generated videos are shown: written as mp4 (and logged to the loggers, none here)
    shown = sorted((tmp_path / "run/eval/step_0000002").glob("*.mp4"))
    assert len(shown) == 2 and (tmp_path / "run/eval/step_0000002/prompts.txt").read_text().splitlines() == \
        callback._prompts

    # the same FVD from the same videos, computed outside the callback
    from lvdm.metrics.fvd import FrechetVideoDistance

    with torch.no_grad():
        fake = module.generate(callback._prompts, num_frames=9, num_steps=None, seed=callback.seed)
        reference = FrechetVideoDistance()
        reference.update(features=callback._real_features, real=True)
        reference.update(fake.float(), real=False)
    assert results["eval/fvd"] == pytest.approx(reference.compute().item(), rel=1e-6)
    assert len(callback._prompts) == 2 and callback._real_features.shape == (2, 400)


def test_processes_share_the_work_without_changing_the_videos(tmp_path):
    """3 videos over 2 processes: contiguous shares, the same seed per video as on 1 process,
    and the same number of sampling batches on every process (padding not scored)."""
    from types import SimpleNamespace

    write_synthetic_dataset(str(tmp_path / "shapes"), num_train=1, num_val=3, num_frames=9)
    module = SimpleNamespace(sample_shape=(9, 32, 32), device=torch.device("cpu"))

    def plan(rank, world):
        callback = PeriodicEvaluation(real=str(tmp_path / "shapes/val-*.tar"), num_videos=3, batch_size=1,
                                      seed=10, fvd=False, clip="unused")
        callback.clip = None  # no CLIP to load: only the split is under test
        callback._setup(SimpleNamespace(global_rank=rank, world_size=world), module)
        return callback._prompts, callback._batches()

    prompts, batches = plan(0, 1)
    assert [(seed, keep) for _, seed, keep in batches] == [(10, 1), (11, 1), (12, 1)]
    (p0, b0), (p1, b1) = plan(0, 2), plan(1, 2)
    assert p0 + p1 == prompts and len(b0) == len(b1) == 2
    scored = [(b[0][0], seed) for b, seed, keep in b0 + b1 if keep]
    assert scored == [(b[0][0], seed) for b, seed, _ in batches]


def test_bad_settings():
    with pytest.raises(ValueError, match="num_videos must be >= 2"):
        PeriodicEvaluation(real="x", num_videos=1)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        PeriodicEvaluation(real="x", fvd=False)
    with pytest.raises(ValueError, match="vbench="):
        PeriodicEvaluation(real="x", fvd=False, vbench=[])


def test_periodic_vbench_logs_the_dimensions_of_the_generated_videos(tmp_path):
    """A tiny random model trained 2 steps: with vbench (no FVD), the callback logs each chosen
    dimension of its generated videos, equal to VBenchScores on the same generations."""
    from lvdm.metrics.vbench import VBenchScores

    write_synthetic_dataset(str(tmp_path / "shapes"), num_train=1, num_val=2, num_frames=9)
    torch.manual_seed(0)
    dit = DiT(in_channels=3, patch_size=(1, 8, 8), hidden_size=32, depth=1, num_heads=2,
              conditioning="cross_attn", context_dim=16)
    module = LatentDiffusionModule(dit, WordTextEncoder(dim=16, max_length=8), RectifiedFlow(num_sampling_steps=2),
                                   sample_shape=(9, 32, 32))
    dimensions = ["temporal_flickering", "motion_smoothness", "dynamic_degree"]
    callback = PeriodicEvaluation(real=str(tmp_path / "shapes/val-*.tar"), every_n_steps=2, num_videos=2, fvd=False,
                                  vbench=dimensions, vbench_options={"flow": "lucas_kanade"})
    batch = {"video": torch.rand(2, 3, 9, 32, 32) * 2 - 1, "caption": ["a red square moving left"] * 2}
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[callback], limit_val_batches=0,
                        default_root_dir=tmp_path / "run")
    trainer.fit(module, DataLoader([batch] * 2, batch_size=None))
    results = callback.history[0][1]
    assert list(results) == [f"eval/vbench/{name}" for name in dimensions]
    for name, value in results.items():
        assert trainer.callback_metrics[name].item() == pytest.approx(value, rel=1e-6)
    with torch.no_grad():
        fake = module.generate(callback._prompts, num_frames=9, num_steps=None, seed=callback.seed)
    reference = VBenchScores(dimensions, flow="lucas_kanade")
    reference.update(fake.float())
    assert {f"eval/vbench/{k}": v for k, v in reference.compute().items()} == pytest.approx(results, rel=1e-9)
    assert 0.0 < results["eval/vbench/temporal_flickering"] < 1.0  # noise-like samples flicker
