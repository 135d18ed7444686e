"""The suite's session check (tests/conftest.py) fails a run whose tests leave files in the
repository, ignored ones included, and stays quiet outside a git checkout."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

WRITES_INTO_THE_CWD = """
from pathlib import Path

def test_trains():
    Path("checkpoints").mkdir()
    Path("checkpoints/last.ckpt").write_bytes(b"weights")  # *.ckpt is git-ignored
"""


def _project(root: Path, git: bool) -> Path:
    """A repository holding the suite's conftest.py and one test that writes into the working directory."""
    (root / "tests").mkdir(parents=True)
    shutil.copy(CONFTEST, root / "tests" / "conftest.py")
    (root / "tests" / "test_writes.py").write_text(WRITES_INTO_THE_CWD)
    (root / ".gitignore").write_text("*.ckpt\n")
    if git:
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        subprocess.run(["git", "add", "."], cwd=root, check=True)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=root, check=True)
    return root


def _pytest(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CONFTEST.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_test_writing_into_the_repository_fails_the_run(tmp_path):
    proc = _pytest(_project(tmp_path / "repo", git=True))
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout and "the tests left these in the repository" in proc.stdout
    assert "checkpoints/" in proc.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_clean_run_passes(tmp_path):
    root = _project(tmp_path / "repo", git=True)
    (root / "tests" / "test_writes.py").write_text("def test_nothing(tmp_path):\n    (tmp_path / 'x').write_text('ok')\n")
    proc = _pytest(root)
    assert proc.returncode == pytest.ExitCode.OK, proc.stdout + proc.stderr


def test_outside_a_git_checkout_the_check_is_skipped(tmp_path):
    proc = _pytest(_project(tmp_path / "tarball", git=False))
    assert proc.returncode == pytest.ExitCode.OK, proc.stdout + proc.stderr
