"""Every place lvdm reads a user's checkpoint, given a file whose unpickling would run code
(it would create a marker file), refuses it and runs nothing; NaN weights are refused too."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from lvdm.checkpoints.load import UnsafeCheckpointError, build_module
from lvdm.cli import main


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil(tmp_path, tiny_hparams):
    """A .ckpt, a DeepSpeed directory and a .safetensors that would each run `touch <marker>`."""
    marker = tmp_path / "pwned"
    hparams = tiny_hparams()
    module = build_module(hparams)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": hparams, "global_step": 1, "x": RunsCode(marker)}, ckpt)
    ds = tmp_path / "evil_ds.ckpt"
    (ds / "tag").mkdir(parents=True)
    (ds / "latest").write_text("tag")
    torch.save({"module": state, "x": RunsCode(marker)}, ds / "tag" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {"zero_stage": 2}, "x": RunsCode(marker)},
               ds / "tag" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    st = tmp_path / "evil.safetensors"
    recipe = {**hparams, "denoiser": {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}}}
    save_file({k: v.contiguous() for k, v in state.items()}, st,
              metadata={"lvdm_hyper_parameters": json.dumps(recipe), "weights": "raw"})
    return {"ckpt": ckpt, "ds": ds, "st": st, "marker": marker, "tmp": tmp_path}


def refused(evil, argv, match=None):
    with pytest.raises((UnsafeCheckpointError, SystemExit)) as err:
        main(argv)
    assert not evil["marker"].exists(), f"lvdm {' '.join(argv)} ran the file's code"
    if match:
        assert match in str(err.value)


@pytest.mark.parametrize("kind", ["ckpt", "ds", "st"])
def test_lvdm_sample_refuses(evil, kind):
    refused(evil, ["sample", "--checkpoint", str(evil[kind]), "--prompts", '["a red square"]',
                   "--out", str(evil["tmp"] / "out")], match=evil[kind].name)
    assert not (evil["tmp"] / "out").exists() or not list((evil["tmp"] / "out").glob("*.mp4"))


@pytest.mark.parametrize("kind", ["ckpt", "ds"])
def test_lvdm_checkpoint_export_refuses(evil, kind):
    out = evil["tmp"] / "model.safetensors"
    refused(evil, ["checkpoint", "export", "--checkpoint", str(evil[kind]), "--out", str(out)], match=evil[kind].name)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["ckpt", "ds", "st"])
def test_lvdm_eval_fvd_fake_checkpoint_refuses(evil, kind):
    prompts = evil["tmp"] / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n")
    (evil["tmp"] / "real").mkdir()
    refused(evil, ["eval", "fvd", "--real", str(evil["tmp"] / "real"), "--fake_checkpoint", str(evil[kind]),
                   "--prompt_file", str(prompts), "--num_videos", "2"], match=evil[kind].name)


def test_the_fixtures_are_real(evil):
    """Loading the .ckpt unsafely does run its code: the tests above can fail."""
    torch.load(evil["ckpt"], weights_only=False)
    assert evil["marker"].exists()


def test_resuming_fit_from_a_crafted_checkpoint_refuses(evil, tmp_path):
    from lvdm.cli import lightning_cli
    from lvdm.shapes.synthetic import write_synthetic_dataset

    data = tmp_path / "shapes"
    write_synthetic_dataset(str(data), num_train=8, num_val=2, shard_size=8)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = ["fit", "--config", os.path.join(root, "recipes/tiny/adaln.yaml"),
            "--data.init_args.train_shards", str(data / "train-*.tar"), "--data.init_args.val_shards", "null",
            "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.enable_progress_bar", "false"]
    for kind in ("ckpt", "ds"):
        with pytest.raises(Exception) as err:
            lightning_cli([*args, "--ckpt_path", str(evil[kind])])
        assert not evil["marker"].exists()
        assert "evil" in str(err.value) or "weights_only" in str(err.value), str(err.value)


# --------------------------------------------------------------------------- NaN weights
def nan_checkpoint(tmp_path, hparams):
    module = build_module(hparams)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    state["denoiser.final_layer.linear.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": hparams, "global_step": 3}, path)
    return path


def test_sample_refuses_a_nan_model(tmp_path, tiny_hparams):
    with pytest.raises(SystemExit, match=r"non-finite .*denoiser.final_layer.linear.weight"):
        main(["sample", "--checkpoint", str(nan_checkpoint(tmp_path, tiny_hparams())), "--prompts", '["a red square"]',
              "--out", str(tmp_path / "out")])
    assert not list(tmp_path.glob("out/*.mp4"))


def test_export_refuses_nan_weights(tmp_path, tiny_hparams):
    out = tmp_path / "model.safetensors"
    with pytest.raises(SystemExit, match=r"non-finite .*denoiser.final_layer.linear.weight"):
        main(["checkpoint", "export", "--checkpoint", str(nan_checkpoint(tmp_path, tiny_hparams())), "--out", str(out)])
    assert not out.exists()
