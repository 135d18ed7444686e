"""lvdm.checkpoints.load: one loader for every checkpoint kind, which a crafted file cannot attack."""

import io
import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

from lvdm.checkpoints.load import UnsafeCheckpointError, build_module, load_module, torch_load
from lvdm.utils import read_prompt_file


class _RunsCode:
    """Unpickling this calls os.system: the shape of a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _checkpoint(tmp_path, hparams, with_ema=True):
    module = build_module(hparams)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    ckpt = {"state_dict": state, "hyper_parameters": hparams, "global_step": 7, "callbacks": {}}
    if with_ema:
        shadow = {n: torch.full_like(p, 0.5) for n, p in module.named_parameters()}
        ckpt["callbacks"]["EMA"] = {"shadow": shadow, "num_updates": 3, "decay": 0.9}
    path = tmp_path / "model.ckpt"
    torch.save(ckpt, path)
    return path, module


def test_load_module_raw_ema_and_auto(tmp_path, tiny_hparams):
    path, module = _checkpoint(tmp_path, tiny_hparams())
    raw = load_module(path, weights="raw")
    assert raw.weights == "raw" and raw.global_step == 7
    for k, v in module.state_dict().items():
        assert torch.equal(raw.module.state_dict()[k], v), k
    ema = load_module(path)  # auto → EMA when present
    assert ema.weights == "ema" and "EMA weights at step 7" in ema.describe()
    assert all(torch.all(p == 0.5) for p in ema.module.parameters())
    (tmp_path / "plain").mkdir()
    plain, _ = _checkpoint(tmp_path / "plain", tiny_hparams(), with_ema=False)
    assert load_module(plain).weights == "raw"
    with pytest.raises(ValueError, match="no EMA weights"):
        load_module(plain, weights="ema")


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt"):
        load_module(path)
    with pytest.raises(UnsafeCheckpointError):
        torch_load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the fixture is real: an unsafe load runs it
    assert marker.exists()


@pytest.mark.parametrize("change", [
    {"_class_path": "subprocess.Popen"},
    {"_instantiator": "os.system"},
    {"denoiser": {"class_path": "subprocess.Popen", "init_args": {"args": "touch pwned"}}},
])
def test_a_stored_recipe_may_only_name_allowed_classes(tmp_path, change, tiny_hparams):
    path, module = _checkpoint(tmp_path, tiny_hparams())
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"].update(change)
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpointError):
        load_module(path)
    # the same recipe as safetensors metadata (what `lvdm checkpoint export` writes)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, weights,
              metadata={"lvdm_hyper_parameters": json.dumps(ckpt["hyper_parameters"]), "weights": "raw"})
    with pytest.raises(UnsafeCheckpointError):
        load_module(weights)


def test_safetensors_round_trip_and_bad_metadata(tmp_path, tiny_hparams):
    _, module = _checkpoint(tmp_path, tiny_hparams())
    weights = tmp_path / "model.safetensors"
    tensors = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, weights, metadata={"lvdm_hyper_parameters": json.dumps(tiny_hparams()), "weights": "ema",
                                         "global_step": "12"})
    loaded = load_module(weights)
    assert (loaded.weights, loaded.global_step) == ("ema", 12)
    with pytest.raises(ValueError, match="holds ema weights"):
        load_module(weights, weights="raw")
    save_file(tensors, weights, metadata={"lvdm_hyper_parameters": "{not json"})
    with pytest.raises(ValueError, match="not JSON"):
        load_module(weights)
    save_file(tensors, weights)
    with pytest.raises(ValueError, match="lvdm checkpoint export"):
        load_module(weights)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(Exception, match="text.ckpt"):
        load_module(tmp_path / "text.ckpt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "dict.ckpt")
    with pytest.raises(ValueError, match="no 'state_dict'"):
        load_module(tmp_path / "dict.ckpt")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_module(tmp_path / "nowhere.ckpt")
    with pytest.raises(ValueError, match="weights must be"):
        load_module(tmp_path / "dict.ckpt", weights="best")


def test_read_prompt_file_stdin_pipe_and_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a red square\n\n  a blue circle \n"))
    assert read_prompt_file("-") == ["a red square", "a blue circle"]
    read_fd, write_fd = os.pipe()  # what `--prompt_file <(echo ...)` hands over: /dev/fd/N, not a regular file
    os.write(write_fd, b"a green triangle\n")
    os.close(write_fd)
    try:
        assert read_prompt_file(f"/dev/fd/{read_fd}") == ["a green triangle"]
    finally:
        os.close(read_fd)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_prompt_file(str(tmp_path / "missing.txt"))
    with pytest.raises(IsADirectoryError):
        read_prompt_file(str(tmp_path))

