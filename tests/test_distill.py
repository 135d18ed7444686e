"""Few-step distillation (lvdm.training.distill_module): the teacher's rollout is its own sampler,
the regression target reproduces it, the tiny recipe trains a student from a tiny random teacher
saved here, the student samples through `lvdm sample` at its defaults without the teacher, and a
resumed distillation run ends where an uninterrupted one does."""

from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from lvdm.checkpoints.load import build_module
from lvdm.cli import lightning_cli
from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.training.distill_module import DistillationModule

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red square moving left", "a blue circle moving up"]


@pytest.fixture
def teacher(tmp_path, tiny_hparams):
    """A tiny random teacher saved as an `lvdm fit` checkpoint; returns (path, hparams, module)."""
    hparams = tiny_hparams(guidance_scale=3.0, objective={
        "class_path": "lvdm.diffusion.objectives.RectifiedFlow", "init_args": {"shift": 2.0, "num_sampling_steps": 8}})
    torch.manual_seed(0)
    module = build_module(hparams)
    with torch.no_grad():  # the zero-initialised output layer would make every velocity the same
        for p in module.denoiser.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, "global_step": 5, "callbacks": {}}, path)
    return path, hparams, module.eval()


def student(teacher, steps=4, **kwargs) -> DistillationModule:
    path, hparams, _ = teacher
    parts = build_module(hparams)
    module = DistillationModule(parts.denoiser, parts.text_encoder, RectifiedFlow(shift=2.0, num_sampling_steps=steps),
                                teacher=str(path), sample_shape=hparams["sample_shape"], **kwargs)
    module.start_from_teacher()
    return module


def test_the_rollout_is_the_teachers_guided_sampler_at_k_times_substeps(teacher):
    module = student(teacher, teacher_substeps=2)
    torch.manual_seed(3)
    states, grid = module.teacher_trajectory(CAPTIONS)
    assert states.shape == (5, 2, 3, 2, 8, 8) and grid.tolist() == RectifiedFlow(shift=2.0).timesteps(4, states[0]).tolist()
    reference = teacher[2]
    torch.manual_seed(3)
    noise = torch.randn(2, 3, 2, 8, 8)
    model_fn = reference.guided_denoiser(CAPTIONS, 3.0)
    sampled = reference.objective.sample(model_fn, noise, 8, **reference.micro_conditions(2, 2, 8, 8))
    assert torch.equal(states[0], noise)
    torch.testing.assert_close(states[-1], sampled, rtol=1e-5, atol=1e-6)


def test_the_student_starts_as_the_teacher_and_matches_its_unguided_single_steps(teacher):
    module = student(teacher, teacher_substeps=1, teacher_guidance=1.0)
    for key, value in teacher[2].state_dict().items():
        assert torch.equal(module.state_dict()[key], value), key
    batch = {"caption": CAPTIONS}
    assert module.distillation_loss(batch) < 1e-10  # one unguided Euler step: the student's own jump
    guided = student(teacher, teacher_substeps=2)
    assert guided.distillation_loss(batch) > 1e-4  # guidance and sub-steps: something to learn
    assert module.guidance_scale == 1.0 and module.student_steps == 4


def test_bad_settings_are_refused_in_one_line(teacher):
    from lvdm.diffusion.objectives import DDPM

    parts = build_module(teacher[1])
    with pytest.raises(ValueError, match="distils rectified flow; the objective is DDPM"):
        DistillationModule(parts.denoiser, parts.text_encoder, DDPM())
    with pytest.raises(ValueError, match="teacher_substeps must be >= 1, got 0"):
        DistillationModule(parts.denoiser, parts.text_encoder, RectifiedFlow(), teacher_substeps=0)
    with pytest.raises(ValueError, match="teacher is empty"):
        DistillationModule(parts.denoiser, parts.text_encoder, RectifiedFlow()).start_from_teacher()
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        DistillationModule(parts.denoiser, parts.text_encoder, RectifiedFlow(), teacher="missing.ckpt").start_from_teacher()


def fit(tmp_path, teacher_path, hparams, run, steps, ckpt_path=None):
    """The tiny recipe, shrunk to the teacher's architecture, on caption-only batches."""
    fragment = tmp_path / "tiny_teacher.yaml"
    fragment.write_text(yaml.safe_dump({"model": {"init_args": {
        "teacher": str(teacher_path), "denoiser": hparams["denoiser"], "text_encoder": hparams["text_encoder"],
        "sample_shape": hparams["sample_shape"],
        "objective": {"class_path": "lvdm.diffusion.objectives.RectifiedFlow",
                      "init_args": {"shift": 2.0, "num_sampling_steps": 4}}}}}))
    cli = lightning_cli(["--config", str(ROOT / "recipes/distill/tiny.yaml"), "--config", str(fragment),
                         "--trainer.max_steps", str(steps), "--trainer.logger", "false",
                         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                         "--trainer.default_root_dir", str(tmp_path / run)], run=False)
    batches = DataLoader([{"caption": CAPTIONS}] * 8, batch_size=None)
    cli.trainer.fit(cli.model, train_dataloaders=batches, ckpt_path=ckpt_path)
    return cli.model, tmp_path / run / "checkpoints" / "last.ckpt"


def test_tiny_recipe_distils_a_student_that_samples_at_its_defaults_without_the_teacher(teacher, tmp_path):
    from lvdm.generation.generator import Generator

    path, hparams, _ = teacher
    model, ckpt = fit(tmp_path, path, hparams, "run", 2)
    assert model.trainer.global_step == 2 and ckpt.is_file()
    path.unlink()  # the student's checkpoint stands alone
    loaded = Generator(str(ckpt)).module  # what `lvdm sample` loads
    assert type(loaded) is DistillationModule and loaded.student_steps == 4 and loaded.guidance_scale == 1.0
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    rows = []
    loaded.denoiser.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    video = loaded.generate(["a red square"])
    assert rows == [1, 1, 1, 1] and video.shape == (1, 3, 2, 8, 8)  # 4 steps, no unconditional half


@pytest.mark.slow
def test_a_resumed_distillation_run_ends_where_an_uninterrupted_one_does(teacher, tmp_path):
    path, hparams, _ = teacher
    straight, _ = fit(tmp_path, path, hparams, "straight", 4)
    _, half = fit(tmp_path, path, hparams, "half", 2)
    resumed, _ = fit(tmp_path, path, hparams, "half", 4, ckpt_path=str(half))
    assert resumed.trainer.global_step == 4
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
