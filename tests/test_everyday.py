"""Everyday use: a quiet fit that logs curves, videos and its recipe to TensorBoard, writes
last.ckpt where the README says, and `lvdm sample` that guards its output folder."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lvdm.training.callbacks.progress import epoch_description
from lvdm.training.callbacks.steps import EveryNSteps
from lvdm.cli import lightning_cli

ROOT = Path(__file__).resolve().parents[1]
# the real-size Open-Sora phases are built on the meta device elsewhere (tests/test_opensora_recipes.py)
# the Open-Sora phases need pretrained weights; shapes_dit_vae.yaml needs a trained VAE and is run
# (checkpoints folder included) by tests/test_autoencoder_pipeline.py
# (recipes/finetune, opensora2, wan: their own tests, which build the real sizes on meta and make
# the bases their tiny variants load; built here, an 11.9B model would be allocated for real)
RECIPES = sorted(set((ROOT / "recipes").rglob("*.yaml")) - set((ROOT / "recipes/opensora").glob("*.yaml"))
                 - {p for d in ("finetune", "opensora2", "wan") for p in (ROOT / "recipes" / d).rglob("*.yaml")}
                 - {ROOT / "recipes/autoencoder/shapes_dit_vae.yaml"})


def lvdm(*args, cwd=ROOT):
    proc = subprocess.run([sys.executable, "-m", "lvdm.cli", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"lvdm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_importing_the_cli_imports_nothing_heavy():
    """`lvdm --help` and `lvdm <group> --help` stay fast because lvdm.cli imports no framework."""
    code = ("import sys, lvdm.cli; heavy = {'torch', 'lightning', 'jsonargparse', 'omegaconf'} & set(sys.modules);"
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for argv in (["--help"], ["data", "--help"], ["eval", "--help"]):
        code = (f"import sys, lvdm.cli; lvdm.cli.main({argv!r});"
                "print(sorted({'torch', 'lightning', 'jsonargparse'} & set(sys.modules)))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip().splitlines()[-1] == "[]", argv


@pytest.mark.parametrize("epoch,max_epochs,max_steps,expect", [
    (0, -1, 300, "Epoch 0 · stops at step 300"),  # streamed data, step-bounded: Lightning shows 0/-2
    (30, 10, 300, "Epoch 30 · stops at step 300"),  # resumed past a max_epochs the steps override
    (3, 10, -1, "Epoch 3/9"),
    (30, 10, -1, "Epoch 30"),  # already past the bound: no wrong denominator
    (2, None, -1, "Epoch 2"),
])
def test_epoch_description(epoch, max_epochs, max_steps, expect):
    assert epoch_description(epoch, max_epochs, max_steps) == expect


def test_every_n_steps_claims_each_step_once():
    trigger = EveryNSteps(2)
    # gradient accumulation: several batches end on the same global step
    fired = [step for step in (0, 0, 1, 1, 2, 2, 3, 4, 4) if trigger.due(step)]
    assert fired == [2, 4]
    assert not trigger.claim(4) and trigger.claim(5)
    assert not any(EveryNSteps(0).due(step) for step in range(5))
    with pytest.raises(ValueError, match="every_n_steps"):
        EveryNSteps(-1)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_keeps_last_ckpt_where_the_readme_says(recipe):
    cli = lightning_cli(["--config", str(recipe)], run=False)
    checkpoint = cli.trainer.checkpoint_callback
    folder = checkpoint.dirpath or checkpoint.run_folder(cli.trainer)  # the Open-Sora phases name theirs
    assert checkpoint.save_last and Path(folder).resolve() == (Path(cli.trainer.default_root_dir) / "checkpoints").resolve()
    if "fps" in yaml.safe_load(recipe.read_text())["model"]["init_args"]:
        assert cli.model.fps == 8  # the synthetic shapes clips' rate, what lvdm sample writes


def test_recipes_interpolate_through_omegaconf():
    """The demo's schedule length follows `--trainer.max_steps` (given once)."""
    cli = lightning_cli(["--config", str(ROOT / "recipes/demo/shapes.yaml"), "--trainer.max_steps", "123"], run=False)
    assert cli.config["model"]["init_args"]["lr_scheduler"]["init_args"]["total_steps"] == 123
    assert cli.trainer.max_steps == 123


def test_quiet_fit_logs_curves_videos_and_recipe_then_samples_safely(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lvdm.cli import main

    # `lvdm fit` runs as its own process (what it prints is checked); the other commands run in this
    # one through the same entry point (each process costs seconds of start-up).
    data = tmp_path / "shapes"
    main(["data", "synth", "--out", str(data), "--num_train", "16", "--num_val", "4"])
    preview = tmp_path / "preview.yaml"
    preview.write_text(yaml.safe_dump({"trainer": {"callbacks+": [{
        "class_path": "lvdm.training.callbacks.preview.SamplePreview",
        "init_args": {"prompts": ["a red square moving left"], "every_n_steps": 1, "num_steps": 2}}]}}))
    run = tmp_path / "run"
    fit = lvdm("fit", "--config", "recipes/tiny/adaln.yaml", "--config", str(preview),
               "--data.init_args.train_shards", str(data / "train-*.tar"),
               "--data.init_args.val_shards", str(data / "val-*.tar"), "--data.init_args.batch_size", "2",
               "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
               "--trainer.log_every_n_steps", "1", "--trainer.default_root_dir", str(run))
    printed = fit.stdout + fit.stderr
    assert "Tip:" not in printed and "args parameter" not in printed and "/-2" not in printed
    assert "Epoch 0 · stops at step 2" in printed

    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    (log_dir,) = (run / "lightning_logs").iterdir()
    assert len(list((log_dir / "samples").rglob("*.mp4"))) == 2  # steps 1 and 2
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    assert len(events.Scalars("train/loss")) == 2
    videos = events.Images("samples/0")
    assert [v.step for v in videos] == [1, 2]
    assert videos[0].encoded_image_string.startswith(b"GIF89a") and (videos[0].width, videos[0].height) == (32, 32)
    recipe = events.Tensors("recipe/text_summary")
    assert len(recipe) == 1 and b"lvdm.models.dit.DiT" in recipe[0].tensor_proto.string_val[0]

    out = tmp_path / "samples"
    capsys.readouterr()
    main(["sample", "--checkpoint", str(ckpt), "--prompts", '["a", "b"]', "--out", str(out), "--steps", "1"])
    first = capsys.readouterr().out
    assert "raw (non-EMA) weights at step 2" in first and "8 fps" in first
    import av

    with av.open(str(next(out.glob("*.mp4")))) as container:
        assert container.streams.video[0].average_rate == 8
    with pytest.raises(FileExistsError, match="already holds 2 videos") as again:  # `lvdm sample` fails with it
        main(["sample", "--checkpoint", str(ckpt), "--prompts", '["c"]', "--out", str(out), "--steps", "1"])
    assert "--overwrite" in str(again.value)
    assert len(list(out.glob("*.mp4"))) == 2  # nothing lost
    main(["sample", "--checkpoint", str(ckpt), "--prompts", '["c"]', "--out", str(out), "--steps", "1",
          "--fps", "12", "--overwrite", "true"])
    (only,) = out.glob("*.mp4")
    assert only.name == "00000_c.mp4" and (out / "prompts.txt").read_text() == "c\n"
    with av.open(str(only)) as container:
        assert container.streams.video[0].average_rate == 12


def test_gif_holds_every_frame():
    from io import BytesIO

    import numpy as np
    from PIL import Image

    from lvdm.training.callbacks.media import gif_bytes

    frames = np.zeros((5, 8, 6, 3), dtype=np.uint8)
    for t in range(5):
        frames[t, :, :, 0] = 50 * t  # each frame its own red level
    gif = Image.open(BytesIO(gif_bytes(frames, fps=10)))
    assert gif.n_frames == 5 and gif.size == (6, 8) and gif.info["duration"] == 100
    reds = []
    for t in range(5):
        gif.seek(t)
        reds.append(np.asarray(gif.convert("RGB"))[0, 0, 0])
    assert reds == [0, 50, 100, 150, 200]


def test_wandb_fragment_composes_when_wandb_is_installed():
    pytest.importorskip("wandb")
    cli = lightning_cli(["--config", str(ROOT / "recipes/tiny/adaln.yaml"), "--config", str(ROOT / "loggers/wandb.yaml")],
                        run=False)
    assert {type(lg).__name__ for lg in cli.trainer.loggers} == {"TensorBoardLogger", "WandbLogger"}
