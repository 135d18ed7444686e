"""The `lvdm` command: help texts, recipe loading, errors, and a CPU fit → checkpoint → sample run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lvdm.cli import lightning_cli, main

ROOT = Path(__file__).resolve().parents[1]
# The real-size Open-Sora phases need GPUs and pretrained T5 / VAE / PixArt-α weights: they are
# parsed and their models built on the meta device in tests/test_opensora_recipes.py instead.
# recipes/finetune, recipes/opensora2 and recipes/wan (pretrained bases and encoders, real sizes
# of 1.4–14B parameters that would be allocated here; tiny variants needing their test-made bases)
# are built on meta and run in tests/test_finetune_recipes.py, test_opensora2_recipes.py and
# test_wan_recipes.py.
REAL_SIZE_RECIPES = sorted((ROOT / "recipes/opensora").glob("*.yaml"))
RECIPES = sorted(set((ROOT / "recipes").rglob("*.yaml")) - set(REAL_SIZE_RECIPES)
                 - {p for d in ("finetune", "opensora2", "wan") for p in (ROOT / "recipes" / d).rglob("*.yaml")})
# recipes whose compressor is a trained lvdm autoencoder: built from one in tests/test_autoencoder_pipeline.py
NEEDS_TRAINED_VAE = {ROOT / "recipes/autoencoder/shapes_dit_vae.yaml"}
FRAGMENTS = sorted((ROOT / "callbacks").glob("*.yaml"))


def lvdm(*args, cwd=ROOT, check=True):
    proc = subprocess.run([sys.executable, "-m", "lvdm.cli", *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"lvdm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_top_level_help(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "sample", "data synth", "data encode", "eval probe", "eval fvd",
                    "eval clipscore", "estimate", "checkpoint export"):
        assert command in out


@pytest.mark.parametrize("argv,expect", [
    (["fit", "--help"], "--config"),
    (["sample", "--help"], "--checkpoint"),
    (["data", "synth", "--help"], "--num_train"),
    (["eval", "probe", "--help"], "--videos"),
    (["checkpoint", "export", "--help"], "--ema"),
    (["eval", "fvd", "--help"], "--fake_checkpoint"),
    (["eval", "clipscore", "--help"], "--clip"),
    (["estimate", "--help"], "--sp_size"),
])
def test_subcommand_help(argv, expect, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert expect in capsys.readouterr().out


def test_recipes_exist_for_every_conditioning_variant():
    names = {p.stem for p in RECIPES}
    assert {"adaln", "cross_attn", "in_context"} <= names


@pytest.mark.parametrize("recipe", sorted(set(RECIPES) - NEEDS_TRAINED_VAE), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_loads(recipe):
    cli = lightning_cli(["--config", str(recipe)], run=False)
    model = cli.model
    spec = yaml.safe_load(recipe.read_text())["model"]
    assert f"{type(model).__module__}.{type(model).__qualname__}" == spec["class_path"]
    autoencoder = spec["init_args"].get("autoencoder")
    if autoencoder is not None:  # recipes/autoencoder/
        assert type(model.autoencoder).__name__ == autoencoder["class_path"].rsplit(".", 1)[1]
        assert model.autoencoder.latent_channels == autoencoder["init_args"]["latent_channels"]
    denoiser = spec["init_args"].get("denoiser")
    if denoiser is not None:  # diffusion recipes: the DiT they name, its text width the encoder's
        wanted, net = denoiser["init_args"], model.denoiser
        if "depth" in wanted:
            assert len(net.blocks) == wanted["depth"]
        else:  # MMDiT: dual-stream, then single-stream blocks
            assert (len(net.double_blocks), len(net.single_blocks)) == (wanted["depth_double"], wanted["depth_single"])
        assert net.hidden_size == wanted["hidden_size"]
        assert model.denoiser.context_dim == model.text_encoder.dim


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.name)
def test_callback_fragments_compose_with_a_recipe(fragment):
    cli = lightning_cli(["--config", str(ROOT / "recipes/tiny/adaln.yaml"), "--config", str(fragment)], run=False)
    wanted = yaml.safe_load(fragment.read_text())["trainer"]["callbacks+"][0]["class_path"].rsplit(".", 1)[1]
    assert wanted in {type(c).__name__ for c in cli.trainer.callbacks}


def test_unknown_recipe_key_fails_naming_it(tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes/tiny/adaln.yaml").read_text())
    recipe["model"]["init_args"]["denoiser"]["init_args"]["hidden_sise"] = 64
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe))
    proc = lvdm("fit", "--config", str(bad), check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "lvdm fit: unknown key 'hidden_sise' in model.denoiser (lvdm.models.dit.DiT)",
        "did you mean 'hidden_size'? (run `lvdm fit --help` for the options)"]


def _error_lines(argv, capsys) -> list[str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


TINY = ["fit", "--config", str(ROOT / "recipes/tiny/adaln.yaml")]


@pytest.mark.parametrize("argv,first,hint", [
    (TINY + ["--model.init_args.guidanc_scale", "3"],
     "lvdm fit: unknown key 'guidanc_scale' in model (lvdm.training.module.LatentDiffusionModule)", "did you mean 'guidance_scale'?"),
    (TINY + ["--model.init_args.objective.init_args.shiftt", "3"],
     "lvdm fit: unknown key 'shiftt' in model.objective (lvdm.diffusion.objectives.RectifiedFlow)", "did you mean 'shift'?"),
    (TINY + ["--data.init_args.shufle_buffer", "3"],
     "lvdm fit: unknown key 'shufle_buffer' in data (lvdm.data.datamodule.VideoDataModule)", "did you mean 'shuffle_buffer'?"),
    (TINY + ["--trainer.max_stepz", "3"], "lvdm fit: unrecognized argument --trainer.max_stepz",
     "did you mean 'trainer.max_steps'?"),
    (TINY + ["--trainer.max_steps", "abc"], "lvdm fit: trainer.max_steps: expected int, got 'abc'", "lvdm fit --help"),
    (TINY + ["--model.init_args.guidance_scale", "abc"], "lvdm fit: model.guidance_scale: expected float, got 'abc'",
     "lvdm fit --help"),
    (["validate"] + TINY[1:] + ["--data.init_args.batch_sise", "2"],
     "lvdm validate: unknown key 'batch_sise' in data (lvdm.data.datamodule.VideoDataModule)", "did you mean 'batch_size'?"),
    (["sample", "--checkpont", "x.ckpt"], "lvdm sample: unrecognized argument --checkpont", "did you mean 'checkpoint'?"),
    (["estimate", "--frames", "abc"], "lvdm estimate: frames: expected int, got 'abc'", "lvdm estimate --help"),
    (["data", "synth", "--num_trian", "3"], "lvdm data synth: unrecognized argument --num_trian", "did you mean 'num_train'?"),
])
def test_parse_errors_are_one_line_and_a_hint(argv, first, hint, capsys):
    """jsonargparse printed the whole usage and a nested dump of the config: 52-68 lines."""
    lines = _error_lines(argv, capsys)
    assert len(lines) == 2, lines
    assert lines[0] == first and hint in lines[1]


def test_an_unknown_key_in_a_config_file_names_it_and_the_closest_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_stepz: 3\n")
    assert _error_lines(TINY + ["--config", str(bad)], capsys) == [
        "lvdm fit: unknown key 'trainer.max_stepz'", "did you mean 'trainer.max_steps'? (run `lvdm fit --help` for the options)"]


def test_missing_shard_path_fails_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "train-*.tar"
    proc = lvdm("fit", "--config", "recipes/tiny/adaln.yaml", "--data.init_args.train_shards", str(missing),
                "--trainer.default_root_dir", str(tmp_path), check=False)
    assert proc.returncode != 0
    assert str(tmp_path / "nowhere") in proc.stderr


def test_fit_checkpoint_sample_probe_end_to_end(tmp_path):
    # `lvdm fit` and the first `lvdm sample` run as their own processes; the other commands run
    # in this one through the same entry point (each process costs seconds of start-up).
    data = tmp_path / "shapes"
    main(["data", "synth", "--out", str(data), "--num_train", "16", "--num_val", "8"])  # 4 steps x 4 clips
    run = tmp_path / "run"
    lvdm("fit", "--config", "recipes/tiny/cross_attn.yaml", "--config", "callbacks/ema.yaml",
         "--config", "callbacks/checkpoint.yaml",
         "--data.init_args.train_shards", str(data / "train-*.tar"),
         "--data.init_args.val_shards", str(data / "val-*.tar"),
         "--data.init_args.batch_size", "4", "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
         "--trainer.default_root_dir", str(run))
    ckpt = next(run.rglob("last.ckpt"))
    out = tmp_path / "samples"
    lvdm("sample", "--checkpoint", str(ckpt), "--prompts", '["a red square moving left", "a blue circle moving up"]',
         "--out", str(out), "--steps", "2")
    videos = sorted(out.glob("*.mp4"))
    assert [v.name for v in videos] == ["00000_a_red_square_moving_left.mp4", "00001_a_blue_circle_moving_up.mp4"]
    assert (out / "prompts.txt").read_text().splitlines() == ["a red square moving left", "a blue circle moving up"]
    result = tmp_path / "probe.json"
    main(["eval", "probe", "--videos", str(out), "--output", str(result)])
    scores = json.loads(result.read_text())
    assert len(scores["results"]) == 2 and {"colour", "shape", "direction"} <= set(scores["accuracy"])

    # FVD of the checkpoint, sampled by `lvdm eval fvd` itself (10 frames: the I3D needs >= 9,
    # the tiny recipe a multiple of its temporal patch 2)
    real = tmp_path / "real10"
    main(["data", "synth", "--out", str(real), "--num_train", "1", "--num_val", "2", "--num_frames", "10"])
    fvd_json = tmp_path / "fvd.json"
    main(["eval", "fvd", "--real", str(real / "val-*.tar"), "--fake_checkpoint", str(ckpt),
          "--prompt_file", str(data / "val_prompts.txt"), "--num_videos", "2", "--num_frames", "10",
          "--steps", "1", "--device", "cpu", "--output", str(fvd_json), "--samples_dir", str(tmp_path / "fvd_fake")])
    fvd = json.loads(fvd_json.read_text())
    assert fvd["fake"] == {"source": "generated", "num_videos": 2} and fvd["real"]["num_videos"] == 2
    assert fvd["sampling"]["checkpoint"] == str(ckpt)
    from lvdm.metrics.evaluate import fvd as folder_fvd  # the same generated videos, scored as a folder

    again = folder_fvd(real=str(real / "val-*.tar"), fake=str(tmp_path / "fvd_fake"), num_videos=2, num_frames=10,
                       device="cpu")
    assert fvd["fvd"] == pytest.approx(again["fvd"], rel=1e-6)

    # A plain .ckpt exports to one safetensors file holding the same (EMA) model.
    import torch

    from lvdm.checkpoints.load import load_ema_weights, load_module
    from lvdm.training.module import LatentDiffusionModule

    weights = tmp_path / "model.safetensors"
    main(["checkpoint", "export", "--checkpoint", str(ckpt), "--out", str(weights), "--ema", "true"])
    reference = LatentDiffusionModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert load_ema_weights(torch.load(ckpt, map_location="cpu", weights_only=True), reference)
    loaded = load_module(weights)
    assert loaded.weights == "ema" and loaded.global_step == 4
    exported = loaded.module.state_dict()
    assert set(exported) == set(reference.state_dict())
    for k, v in reference.state_dict().items():
        assert torch.equal(exported[k], v), k
    main(["sample", "--checkpoint", str(weights), "--prompts", '["a red square moving left"]',
          "--out", str(tmp_path / "from_safetensors"), "--steps", "2"])
    assert len(list((tmp_path / "from_safetensors").glob("*.mp4"))) == 1


def test_fit_under_ddp_with_two_cpu_processes(tmp_path):
    """Two gloo ranks: equal batch counts per rank (no hang), EMA and checkpoint from rank 0."""
    import torch

    data = tmp_path / "shapes"
    main(["data", "synth", "--out", str(data), "--num_train", "40", "--num_val", "8", "--shard_size", "10"])
    run = tmp_path / "run"
    lvdm("fit", "--config", "recipes/tiny/adaln.yaml", "--config", "callbacks/ema.yaml",
         "--config", "callbacks/checkpoint.yaml",
         "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
         "--data.init_args.train_shards", str(data / "train-*.tar"),
         "--data.init_args.val_shards", str(data / "val-*.tar"),
         "--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "12",
         "--trainer.max_steps", "5", "--trainer.val_check_interval", "2",
         "--trainer.default_root_dir", str(run))
    ckpt = torch.load(next(run.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5
    assert ckpt["callbacks"]["EMA"]["num_updates"] == 5


STRATEGIES = sorted((ROOT / "strategies").glob("*.yaml"))


def test_strategy_fragments_exist():
    assert {"ddp", "zero2", "zero2_offload", "zero3", "fsdp"} <= {p.stem for p in STRATEGIES}


# Every fragment with one recipe, every recipe with one fragment: the two sides are independent
# (the full cross product parsed 6 × 18 configs for no more coverage).
_ADALN = ROOT / "recipes/tiny/adaln.yaml"
STRATEGY_PAIRS = [(_ADALN, f) for f in STRATEGIES] + [
    (r, ROOT / "strategies/zero2.yaml") for r in RECIPES if r != _ADALN]


@pytest.mark.parametrize("recipe,fragment", STRATEGY_PAIRS,
                         ids=lambda p: str(p.relative_to(ROOT)) if isinstance(p, Path) else p)
def test_strategy_fragments_compose_with_every_recipe(recipe, fragment, capsys):
    """Recipe + fragment parse together (class paths and init_args checked by jsonargparse)."""
    with pytest.raises(SystemExit) as exit_info:
        lightning_cli(["--config", str(recipe), "--config", str(fragment), "--print_config"], run=False)
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out.splitlines()
    config = yaml.safe_load("\n".join(line for line in printed if not line.startswith("[")))  # DeepSpeed logs
    wanted = yaml.safe_load(fragment.read_text())["trainer"]
    assert config["trainer"]["strategy"]["class_path"] == wanted["strategy"]["class_path"]
    if "DeepSpeed" in wanted["strategy"]["class_path"]:  # bf16 with autocast, via the strategy's plugin
        plugin = config["trainer"]["strategy"]["init_args"]["precision_plugin"]
        assert plugin["class_path"] == "lvdm.distributed.precision.DeepSpeedAutocastPrecision"
        assert plugin["init_args"]["precision"] == "bf16-mixed"
    else:
        assert config["trainer"]["precision"] == "bf16-mixed"
    assert config["model"]["class_path"] == yaml.safe_load(recipe.read_text())["model"]["class_path"]


@pytest.mark.parametrize("fragment", STRATEGIES, ids=lambda p: p.name)
def test_strategy_fragments_build_their_strategy(fragment):
    """The fragment's arguments reach the real Lightning strategy (built on CPU; fit needs GPUs)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    from lvdm.models.dit import DiTBlock
    from lvdm.models.stdit import PixArtBlock

    wanted = yaml.safe_load(fragment.read_text())["trainer"]["strategy"]
    if "DeepSpeed" in wanted["class_path"]:
        pytest.importorskip("deepspeed")
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import Strategy

    parser = ArgumentParser()
    parser.add_subclass_arguments(Strategy, "strategy")
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": wanted})).strategy
    assert type(strategy).__name__ == wanted["class_path"].rsplit(".", 1)[1]
    if isinstance(strategy, DeepSpeedStrategy):
        from lvdm.distributed.precision import DeepSpeedAutocastPrecision

        assert isinstance(strategy.precision_plugin, DeepSpeedAutocastPrecision)
        stage = wanted["init_args"].get("stage") or wanted["init_args"]["config"]["zero_optimization"]["stage"]
        assert strategy.config["zero_optimization"]["stage"] == stage
        assert ("offload_optimizer" in strategy.config["zero_optimization"]) == ("offload" in fragment.stem)
    if isinstance(strategy, FSDPStrategy):
        assert strategy.kwargs["auto_wrap_policy"]._module_classes == {DiTBlock, PixArtBlock}


def test_launch_scripts_are_valid_bash():
    for script in ("scripts/slurm/train.sbatch", "scripts/torchrun.sh"):
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
    sbatch = (ROOT / "scripts/slurm/train.sbatch").read_text()
    assert "#SBATCH --signal=SIGUSR1@90" in sbatch and "#SBATCH --requeue" in sbatch and "srun" in sbatch


def test_ema_refuses_fsdp_with_a_clear_error():
    from types import SimpleNamespace

    import torch
    from lightning.pytorch.strategies import FSDPStrategy

    from lvdm.training.callbacks.ema import EMA

    trainer = SimpleNamespace(strategy=FSDPStrategy(), global_step=0)
    with pytest.raises(RuntimeError, match="does not support FSDP.*zero2.yaml"):
        EMA().on_fit_start(trainer, torch.nn.Linear(2, 2))


def test_export_writes_tied_weights(tmp_path):
    """safetensors refuses tensors that share storage (T5 ties `shared` and `embed_tokens`)."""
    import torch
    from safetensors.torch import load_file, save_file

    from lvdm.checkpoints.export import _unshared

    tied = torch.randn(4, 3)
    weights = {"shared.weight": tied, "encoder.embed_tokens.weight": tied, "row": tied[1], "bias": torch.ones(2)}
    save_file(_unshared(weights), tmp_path / "w.safetensors")
    loaded = load_file(tmp_path / "w.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_export_and_sample_errors_name_the_path(tmp_path):
    from lvdm.checkpoints.export import export_checkpoint
    from lvdm.generation.sample import sample

    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        export_checkpoint(checkpoint=str(tmp_path / "nowhere.ckpt"), out=str(tmp_path / "m.safetensors"))
    (tmp_path / "shards.ckpt").mkdir()
    with pytest.raises(ValueError, match="not a DeepSpeed checkpoint"):
        export_checkpoint(checkpoint=str(tmp_path / "shards.ckpt"), out=str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="not a DeepSpeed checkpoint"):
        sample(checkpoint=str(tmp_path / "shards.ckpt"), prompts=["a red square"])
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        sample(checkpoint=str(tmp_path / "nowhere.ckpt"), prompts=["a red square"])
