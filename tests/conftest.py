"""Shared by the whole suite: a float comparison whose tolerance scales with the values, the tiny
module recipe that the checkpoint tests save, and a check that the suite leaves the repository
as it found it (tests write only under tmp_path)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what Python and pytest write on their own while the suite imports code; never a test's output
_OWN_FILES = ("__pycache__", ".pytest_cache", ".egg-info")

_TREE = pytest.StashKey[frozenset]()


def _assert_close_scaled(actual, expected, rtol=1e-5, msg=None):
    """``torch.testing.assert_close`` with ``atol = rtol * max|expected|``.

    float32 rounding grows with the largest value a computation touches, so an element near zero
    in an output of magnitude 30 carries about 30 * eps of error from another kernel or CPU; an
    element-wise rtol alone fails there, a fixed atol of 1e-6 is below float32's resolution at 30."""
    import torch  # here: loading this conftest (test_tree_clean runs it in subprocesses) stays cheap

    expected = torch.as_tensor(expected)
    actual = torch.as_tensor(actual)
    atol = rtol * expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg)


@pytest.fixture(scope="session")
def assert_close_scaled():
    """The comparison above, for float results computed two ways (another path, kernel or CPU)."""
    return _assert_close_scaled


def _tiny_hparams(**overrides) -> dict:
    """The ``hyper_parameters`` of a tiny text-to-video module (a cross-attention DiT on pixels,
    words as the text encoder): what ``lvdm.checkpoints.load.build_module`` rebuilds from a checkpoint."""
    from lvdm.checkpoints.load import INSTANTIATOR

    return {
        "_class_path": "lvdm.training.module.LatentDiffusionModule",
        "_instantiator": INSTANTIATOR,
        "denoiser": {"class_path": "lvdm.models.dit.DiT", "init_args": {
            "in_channels": 3, "patch_size": [2, 4, 4], "hidden_size": 32, "depth": 1, "num_heads": 2,
            "conditioning": "cross_attn", "layout": "full", "context_dim": 16}},
        "text_encoder": {"class_path": "lvdm.text.words.WordTextEncoder", "init_args": {"dim": 16, "max_length": 4}},
        "objective": {"class_path": "lvdm.diffusion.objectives.RectifiedFlow", "init_args": {"num_sampling_steps": 2}},
        "compressor": {"class_path": "lvdm.compressors.pixels.PixelCompressor"},
        "sample_shape": [2, 8, 8],
        **overrides,
    }


@pytest.fixture(scope="session")
def tiny_hparams():
    """``tiny_hparams(**overrides)``: a fresh dict of the tiny module's hyper-parameters."""
    return _tiny_hparams


def _train_and_sample(denoiser, output_weight, size=(2, 8, 8)):
    """A backbone inside LatentDiffusionModule (words as text, pixels as latents): one training
    step on a batch with a padded caption gives a finite loss and a gradient on ``output_weight``
    (at init only the zeroed output layer gets one, adaLN-zero), and a guided sample has ``size``."""
    import torch

    from lvdm.compressors.pixels import PixelCompressor
    from lvdm.diffusion.objectives import RectifiedFlow
    from lvdm.text.words import WordTextEncoder
    from lvdm.training.module import LatentDiffusionModule

    module = LatentDiffusionModule(denoiser, WordTextEncoder(dim=16, max_length=4), RectifiedFlow(num_sampling_steps=2),
                                   PixelCompressor(), sample_shape=size)
    loss = module.diffusion_loss({"video": torch.rand(2, 3, *size) * 2 - 1, "caption": ["a red square", "blue"]})
    loss.backward()
    assert torch.isfinite(loss) and output_weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert module.generate(["a red square"], *size).shape[-3:] == size


@pytest.fixture(scope="session")
def train_and_sample():
    """``train_and_sample(denoiser, output_weight, size=(2, 8, 8))``: see :func:`_train_and_sample`."""
    return _train_and_sample


# ---------------------------------------------------------------------------------- step caching
def _randomised(model, seed: int = 0, parts=("blocks", "final_layer")):
    """``model`` in eval mode with noise (std 0.2) added to the parameters whose name contains one of
    ``parts`` (blocks and output layers start as the identity and zero: a residual of 0)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part in name for part in parts):
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def _flow_sampler(model, steps: int = 8, channels: int = 2, context_dim: int = 8):
    """Rectified-flow sampling of ``model`` on fixed noise ``[2, channels, 2, 4, 4]`` and text
    ``[2, 3, context_dim]``: ``() -> latents``."""
    import torch

    from lvdm.diffusion.objectives import RectifiedFlow

    gen = torch.Generator().manual_seed(1)
    noise, ctx = torch.randn(2, channels, 2, 4, 4, generator=gen), torch.randn(2, 3, context_dim, generator=gen)
    mask = torch.ones(2, 3, dtype=torch.bool)
    flow = RectifiedFlow(num_sampling_steps=steps)
    return lambda: flow.sample(lambda x, t: model(x, t, ctx, mask), noise)


def _count_block_runs(model, index: int = 0) -> list:
    """A list that grows by one each time ``model``'s ``index``-th ``block_class`` unit runs
    (0: the first, i.e. each block-stack run; -1: the last, each run of the remaining stack)."""
    runs = []
    unit = [m for m in model.modules() if isinstance(m, model.block_class)][index]
    unit.register_forward_pre_hook(lambda *_: runs.append(1))
    return runs


def _random_weights(model):
    """``model`` in eval mode with every parameter drawn from N(0, 0.3²) under seed 0 (init zeroes
    outputs and gates, which would hide every difference between two implementations)."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="session")
def random_weights():
    """``random_weights(model)``: see :func:`_random_weights`."""
    return _random_weights


@pytest.fixture(scope="session")
def randomised():
    """``randomised(model, seed=0, parts=("blocks", "final_layer"))``: see :func:`_randomised`."""
    return _randomised


@pytest.fixture(scope="session")
def flow_sampler():
    """``flow_sampler(model, steps=8, channels=2, context_dim=8)``: see :func:`_flow_sampler`."""
    return _flow_sampler


@pytest.fixture(scope="session")
def count_block_runs():
    """``count_block_runs(model, index=0)``: see :func:`_count_block_runs`."""
    return _count_block_runs


def _noisy_checkpoint(path: Path, hparams: dict, parts=("blocks", "final_layer")) -> Path:
    """``path``: a checkpoint of the module ``hparams`` describe (built with seed 0), with
    :func:`_randomised` noise on ``parts`` (a residual that moves from step to step)."""
    import torch

    from lvdm.checkpoints.load import build_module

    torch.manual_seed(0)
    module = build_module(hparams)
    with torch.no_grad():
        for name, p in module.denoiser.named_parameters():
            if any(part in name for part in parts):
                p.add_(torch.randn_like(p) * 0.2)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, "global_step": 1,
                "callbacks": {}}, path)
    return path


@pytest.fixture(scope="session")
def noisy_checkpoint():
    """``noisy_checkpoint(path, hparams, parts=("blocks", "final_layer"))``: see :func:`_noisy_checkpoint`."""
    return _noisy_checkpoint


@pytest.fixture(scope="session", autouse=True)
def _hypothesis_storage_under_tmp(tmp_path_factory):
    """Hypothesis keeps its examples and constants cache in ./.hypothesis (the repository) unless told otherwise."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYPOTHESIS_STORAGE_DIRECTORY", str(tmp_path_factory.mktemp("hypothesis")))
        yield


def tree_state(root: Path) -> frozenset | None:
    """The entries of ``git status --porcelain --ignored`` in ``root``, leaving out what Python and
    pytest write themselves; None when ``root`` is not a git checkout git can read (an sdist, a
    tarball, no git installed). Ignored files count: ``checkpoints/last.ckpt`` is ignored by ``*.ckpt``."""
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    proc = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=root, check=False,
                          capture_output=True, text=True)
    if proc.returncode:
        return None
    return frozenset(line for line in proc.stdout.splitlines() if not any(own in line for own in _OWN_FILES))


def pytest_sessionstart(session):
    state = tree_state(ROOT)
    if state is not None:
        session.config.stash[_TREE] = state


def pytest_sessionfinish(session):
    """Fail the run when the tests left files in the repository or changed tracked ones."""
    before = session.config.stash.get(_TREE, None)
    if before is None:
        return
    after = tree_state(ROOT)
    left = sorted(after - before) if after is not None else []
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(f"\nthe tests left these in the repository {ROOT} (write under tmp_path instead): "
                            + ", ".join(line[3:] for line in left), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
