"""A stored recipe never runs code: checkpoint hyper-parameters, exported metadata and the recipe
``--ckpt_path`` merges all go through one safe builder. Each payload here is built by the test and
shown to run when loaded the way Lightning/jsonargparse would load it unchecked (a marker file
proves whether code ran)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lvdm.checkpoints.load import UnsafeCheckpointError, build_module, load_module
from lvdm.cli import main
from lvdm.checkpoints.stored_recipe import check_stored_recipe, resolve_allowed, takes_objects

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture
def tiny(tiny_hparams) -> dict:
    return tiny_hparams()


def pipe_payload(tiny: dict, marker: Path) -> dict:
    """The review's payload: only `lvdm.` names, an untyped `dist_sync_fn` receiving webdataset's
    TarWriter (reached through an lvdm module) that opens `pipe:<cmd>`."""
    return {**tiny, "denoiser": {"class_path": "lvdm.metrics.fvd.FrechetVideoDistance", "init_args": {
        "dist_sync_fn": {"class_path": "lvdm.curation.encode.wds.TarWriter",
                         "init_args": {"fileobj": f"pipe:touch {marker}"}}}}}


def popen_payload(tiny: dict, marker: Path) -> dict:
    """`subprocess.Popen` where an untyped parameter takes it (jsonargparse builds class specs in `Any`)."""
    return {**tiny, "denoiser": {"class_path": "lvdm.metrics.fvd.FrechetVideoDistance", "init_args": {
        "dist_sync_fn": {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}}}}}


#: The weights do not matter: every payload is refused (or runs) before they are loaded.
WEIGHTS = {"w": torch.zeros(2)}


def write_ckpt(path: Path, hparams: dict) -> Path:
    torch.save({"state_dict": dict(WEIGHTS), "hyper_parameters": hparams, "global_step": 1}, path)
    return path


def write_safetensors(path: Path, hparams: dict) -> Path:
    save_file(dict(WEIGHTS), path,
              metadata={"lvdm_hyper_parameters": json.dumps(hparams), "weights": "raw"})
    return path


def wait_for(path: Path, seconds: float = 10.0) -> bool:
    """A payload's command runs in a child process: give it time to leave its marker."""
    import time

    end = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < end:
        time.sleep(0.05)
    return path.exists()


@pytest.fixture
def marker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a payload writes lands here
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a stored recipe ran code"


# --------------------------------------------------------------------------- the payloads are real
def test_the_pipe_payload_runs_when_built_unchecked(tmp_path, tiny):
    """Lightning's own instantiator with the old name-prefix allow-list (every class_path starts with
    `lvdm.`) builds TarWriter and runs the shell command: the refusals below can fail."""
    from lightning.pytorch.cli import instantiate_module

    from lvdm.training.module import LatentDiffusionModule

    marker = tmp_path / "pwned"
    hparams = pipe_payload(tiny, marker)
    assert all(p.startswith("lvdm.") for p in ("lvdm.metrics.fvd.FrechetVideoDistance", "lvdm.curation.encode.wds.TarWriter"))
    with pytest.raises(Exception):
        instantiate_module(LatentDiffusionModule, {k: v for k, v in hparams.items() if k != "_instantiator"})
    assert wait_for(marker)


# --------------------------------------------------------------------------- finding 1: every loader
@pytest.mark.parametrize("form", ["ckpt", "safetensors"])
def test_load_module_refuses_the_pipe_payload_naming_file_and_key(tmp_path, tiny, marker, form):
    write = write_ckpt if form == "ckpt" else write_safetensors
    path = write(tmp_path / f"evil.{form}", pipe_payload(tiny, marker))
    with pytest.raises(UnsafeCheckpointError) as err:
        load_module(path)
    message = str(err.value)
    assert path.name in message and "dist_sync_fn" in message and "\n" not in message


COMMANDS = {
    "sample": lambda ck, tmp: ["sample", "--checkpoint", ck, "--prompts", '["a red square"]', "--out", str(tmp / "out")],
    "export": lambda ck, tmp: ["checkpoint", "export", "--checkpoint", ck, "--out", str(tmp / "copy.safetensors")],
    "eval fvd": lambda ck, tmp: ["eval", "fvd", "--real", str(tmp / "none-*.tar"), "--fake_checkpoint", ck,
                                 "--prompt_file", str(tmp / "prompts.txt"), "--num_videos", "2"],
    "eval vae": lambda ck, tmp: ["eval", "vae", "--videos", str(tmp / "none-*.tar"), "--checkpoint", ck, "--fvd", "false"],
    "data encode": lambda ck, tmp: ["data", "encode", "--shards", str(tmp / "none-*.tar"), "--out", str(tmp / "lat"),
                                    "--compressor.class_path", "lvdm.compressors.autoencoder.AutoencoderCompressor",
                                    "--compressor.init_args.checkpoint", ck],
}


@pytest.mark.parametrize("form", ["ckpt", "safetensors"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_the_pipe_payload(tmp_path, tiny, marker, command, form):
    if command == "export" and form == "safetensors":
        pytest.skip("export reads training checkpoints only")
    (tmp_path / "prompts.txt").write_text("a red square\n")
    write = write_ckpt if form == "ckpt" else write_safetensors
    path = write(tmp_path / f"evil.{form}", pipe_payload(tiny, marker))
    with pytest.raises(SystemExit) as err:
        main(COMMANDS[command](str(path), tmp_path))
    assert "evil" in str(err.value.code) and "untyped parameter" in str(err.value.code)
    assert not (tmp_path / "copy.safetensors").exists()


def test_the_app_refuses_the_pipe_payload(tmp_path, tiny, marker):
    from lvdm.generation.app import VideoGenerator

    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt"):
        VideoGenerator(str(write_ckpt(tmp_path / "evil.ckpt", pipe_payload(tiny, marker))), out=str(tmp_path / "out"))


@pytest.mark.parametrize("name, value, why", [
    ("re-exported foreign class", {"class_path": "lvdm.curation.encode.wds.TarWriter", "init_args": {"fileobj": "x"}},
     "webdataset"),
    ("module attribute chain", {"class_path": "lvdm.cli.os.system", "init_args": {"command": "true"}}, "posix"),
    ("outside the packages", {"class_path": "subprocess.Popen", "init_args": {"args": ["true"]}}, "outside"),
    ("a pipe url", {"class_path": "lvdm.models.dit.DiT", "init_args": {"in_channels": "pipe:true"}}, "pipe"),
    ("a shell url", {"class_path": "lvdm.text.words.WordTextEncoder", "init_args": {"dim": 16, "vocab": "http://x/';true'"}},
     "URL"),
])
def test_each_rule_refuses_with_one_line_naming_the_key(tiny, name, value, why):
    with pytest.raises((UnsafeCheckpointError, ValueError)) as err:
        check_stored_recipe({**tiny, "denoiser": value}, source="checkpoint 'x.ckpt'")
    assert why in str(err.value) and "model.denoiser" in str(err.value) and "\n" not in str(err.value)


def test_a_callable_spelt_as_a_string_is_refused_by_the_import_policy(tiny):
    """`optimizer` is typed `OptimizerCallable`: jsonargparse would import the string `os.getcwd`."""
    with pytest.raises(UnsafeCheckpointError, match="os.getcwd"):
        check_stored_recipe({**tiny, "optimizer": "os.getcwd"}, source="checkpoint 'x.ckpt'")


def test_takes_objects_reads_annotations():
    import inspect
    from typing import Any, Callable, Optional, Sequence

    assert takes_objects(torch.nn.Module) and takes_objects(Optional[Callable[[int], float]])
    assert not any(takes_objects(t) for t in (Any, int, Optional[str], Sequence[int], dict, object, inspect.Parameter.empty))
    assert resolve_allowed("lvdm.models.dit.DiT", "x").__name__ == "DiT"


# --------------------------------------------------------------------------- finding 2: --ckpt_path
def _fit_args(tmp_path, *extra):
    from lvdm.shapes.synthetic import write_synthetic_dataset

    data = tmp_path / "shapes"
    if not data.exists():
        write_synthetic_dataset(str(data), num_train=8, num_val=2, shard_size=8)
    return ["--config", str(ROOT / "recipes/tiny/adaln.yaml"), "--data.init_args.train_shards", str(data / "train-*.tar"),
            "--data.init_args.val_shards", "null", "--trainer.max_steps", "1", "--trainer.default_root_dir",
            str(tmp_path / "run"), "--trainer.enable_progress_bar", "false", *extra]


def test_lightnings_own_ckpt_path_merge_runs_a_stored_popen(tmp_path, tiny):
    """Lightning's LightningCLI merges the checkpoint's recipe and builds the stored payload: the
    refusals below can fail."""
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    marker = tmp_path / "pwned"
    ckpt = write_ckpt(tmp_path / "evil.ckpt", pipe_payload(tiny, marker))
    with pytest.raises(BaseException):
        LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     args=["fit", *_fit_args(tmp_path, "--ckpt_path", str(ckpt))],
                     parser_kwargs={"parser_mode": "omegaconf+"})
    assert wait_for(marker)


@pytest.mark.parametrize("payload, names", [(pipe_payload, "TarWriter"), (popen_payload, "subprocess.Popen")])
@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_ckpt_path_refuses_a_stored_payload_in_one_line(tmp_path, tiny, marker, subcommand, payload, names):
    ckpt = write_ckpt(tmp_path / "evil.ckpt", payload(tiny, marker))
    with pytest.raises(SystemExit) as err:
        main([subcommand, *_fit_args(tmp_path, "--ckpt_path", str(ckpt))])
    message = str(err.value.code)
    assert "evil.ckpt" in message and names in message and "model.denoiser.dist_sync_fn" in message
    assert len(message.splitlines()) <= 2


def test_ckpt_path_refuses_a_plain_pickle_in_one_line_naming_the_file(tmp_path, marker):
    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    ckpt = tmp_path / "pickle.ckpt"
    torch.save({"state_dict": {}, "x": RunsCode()}, ckpt)
    with pytest.raises(SystemExit) as err:
        main(["fit", *_fit_args(tmp_path, "--ckpt_path", str(ckpt))])
    assert "pickle.ckpt" in str(err.value.code) and len(str(err.value.code).splitlines()) <= 2


# --------------------------------------------------------------------------- finding 5: hpc_ckpt_N dirs
def _write_evil_deepspeed(path: Path, marker: Path) -> Path:
    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (path / "tag").mkdir(parents=True)
    (path / "latest").write_text("tag")
    torch.save({"module": dict(WEIGHTS), "x": RunsCode()}, path / "tag" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {"zero_stage": 2}, "x": RunsCode()},
               path / "tag" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return path


def test_every_resume_path_is_guarded_on_the_strategy(tmp_path, marker):
    """`guard_checkpoint_loading` sits on `strategy.load_checkpoint`, which Lightning calls for a given
    path, `last`, `hpc` and SLURM's automatic resume alike: a DeepSpeed directory named
    `hpc_ckpt_1.ckpt` is scanned before the (here: recording) DeepSpeed loader sees it."""
    from lvdm.lightning_cli import guard_checkpoint_loading

    seen = []

    class Strategy:
        def load_checkpoint(self, path, weights_only=None):
            seen.append((path, weights_only))
            if Path(path).is_dir():  # as DeepSpeed does: unpickle freely
                return torch.load(next(Path(path).rglob("*model_states.pt")), weights_only=False)
            return torch.load(path, weights_only=weights_only)

    strategy = Strategy()
    guard_checkpoint_loading(strategy)
    evil = _write_evil_deepspeed(tmp_path / "hpc_ckpt_1.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match="hpc_ckpt_1.ckpt"):
        strategy.load_checkpoint(str(evil))
    assert seen == []
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    assert Strategy.load_checkpoint is not strategy.load_checkpoint
    strategy.load_checkpoint(str(plain), weights_only=False)
    assert seen == [(str(plain), True)]  # a file is always read weights-only


@pytest.mark.parametrize("how", ["hpc", pytest.param("slurm", marks=pytest.mark.slow)])
def test_deepspeed_hpc_resume_refuses_a_crafted_directory(tmp_path, how):
    """The real DeepSpeed strategy (on CPU) resuming `--ckpt_path hpc`, or SLURM's automatic resume with
    no ckpt_path, from `<root>/hpc_ckpt_1.ckpt`: refused, naming it, and nothing runs."""
    marker = tmp_path / "pwned"
    _write_evil_deepspeed(tmp_path / "run" / "hpc_ckpt_1.ckpt", marker)
    args = ["fit", *_fit_args(tmp_path, "--config", str(ROOT / "strategies/zero2.yaml"),
                              "--trainer.strategy.class_path", "lvdm.distributed.cpu_deepspeed.CPUDeepSpeedStrategy",
                              "--trainer.strategy.init_args.precision_plugin.init_args.precision", "32-true",
                              "--trainer.accelerator", "cpu", "--trainer.devices", "1")]
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    if how == "hpc":
        args += ["--ckpt_path", "hpc"]
    else:
        env.update(SLURM_NTASKS="1", SLURM_JOB_NAME="train", SLURM_JOB_ID="7", SLURM_PROCID="0", SLURM_LOCALID="0",
                   SLURM_NODEID="0", SLURM_NTASKS_PER_NODE="1")
    done = subprocess.run([sys.executable, "-m", "lvdm.cli", *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0, done.stdout[-2000:]
    assert "hpc_ckpt_1.ckpt" in done.stderr and "refusing" in done.stderr, done.stderr[-3000:]
    assert not marker.exists()


# --------------------------------------------------------------------------- property: no recipe runs code
def _lvdm_classes() -> list[type]:
    """Every class defined in an importable lvdm module."""
    import importlib
    import inspect
    import pkgutil

    import lvdm

    found = {}
    for info in pkgutil.walk_packages(lvdm.__path__, "lvdm."):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # an optional extra that is not installed
            continue
        found.update({f"{obj.__module__}.{obj.__qualname__}": obj for obj in vars(module).values()
                      if inspect.isclass(obj) and obj.__module__ == info.name and "<" not in obj.__qualname__})
    return [found[k] for k in sorted(found)]


def _adversarial(marker: str) -> list:
    touch = f"touch {marker}"
    return [
        f"pipe:{touch}", f"http://127.0.0.1:9/';{touch};'", "os.system", "lvdm.cli.os.system", "subprocess.Popen",
        "lvdm.curation.encode.wds.TarWriter", "builtins.exec",
        {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", marker]}},
        {"class_path": "lvdm.curation.encode.wds.TarWriter", "init_args": {"fileobj": f"pipe:{touch}"}},
        {"class_path": "lvdm.cli.os.system", "init_args": {"command": touch}},
        {"class_path": "lvdm.utils.os.system", "dict_kwargs": {"command": touch}},
    ]


def test_no_generated_recipe_runs_code(tmp_path, tiny, monkeypatch):
    """Recipes over every importable lvdm class, each in the module parameters its type fits (classes
    with untyped parameters or **kwargs drawn half the time), with class specs in untyped parameters,
    pipe and shell URLs and dotted paths as arguments, nested: whatever each build does (most are
    refused), none leaves the marker. With the old name-prefix check the same search finds a payload."""
    import inspect
    import typing

    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    from lvdm.training.module import LatentDiffusionModule
    from lvdm.checkpoints.stored_recipe import _annotations

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    marker = tmp_path / "pwned"
    classes = _lvdm_classes()
    payloads = _adversarial(str(marker))
    bad = st.sampled_from([p for p in payloads if isinstance(p, dict)]) | st.sampled_from(payloads)

    def params(cls) -> list[str]:
        found, var_kw = _annotations(cls)
        return sorted(found) + ["dist_sync_fn", "extra"] * var_kw

    def untyped(cls) -> bool:
        found, var_kw = _annotations(cls)
        return var_kw or any(not takes_objects(a) and a is inspect.Parameter.empty for a in found.values())

    def spec_for(candidates, inner):
        risky = [c for c in candidates if untyped(c)] or candidates
        pick = st.sampled_from(risky) | st.sampled_from(candidates)
        return pick.flatmap(lambda c: st.builds(
            lambda args: {"class_path": f"{c.__module__}.{c.__qualname__}", "init_args": args},
            st.dictionaries(st.sampled_from(params(c)), inner, max_size=3)) if params(c) else st.just(
            {"class_path": f"{c.__module__}.{c.__qualname__}"}))

    leaves = bad | bad | st.sampled_from([1, "x", None])
    inner = st.recursive(leaves, lambda i: spec_for(classes, i) | st.lists(i, max_size=2), max_leaves=4)
    fields = {}
    for name, annotation in typing.get_type_hints(LatentDiffusionModule.__init__).items():
        bases = tuple(t for t in typing.get_args(annotation) or (annotation,) if inspect.isclass(t) and t is not type(None))
        fits = [c for c in classes if bases and issubclass(c, bases)]
        fields[name] = (spec_for(fits, inner) | leaves) if fits else inner
    changes = st.fixed_dictionaries({}, optional=fields)

    @settings(max_examples=80, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(changes.filter(bool))
    @example({k: v for k, v in pipe_payload(tiny, marker).items() if k == "denoiser"})  # the review's payloads
    @example({k: v for k, v in popen_payload(tiny, marker).items() if k == "denoiser"})
    def build(change):
        try:
            build_module({**tiny, **change})
        except Exception:
            pass
        assert not wait_for(marker, 0.05), change

    build()
    assert not wait_for(marker, 2.0)
