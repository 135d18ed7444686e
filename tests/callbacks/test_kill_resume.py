"""kill -9 at random moments (many of them during checkpoint writes, TMPDIR on another
filesystem) and resume with ``ckpt_path="last"``: every resume finds a valid checkpoint and
the run reaches its last step. ``pytest -m slow`` runs the 20-kill version."""

import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lvdm.callbacks.checkpoint import newest_valid_checkpoint

CHILD = textwrap.dedent('''
    import sys
    from pathlib import Path
    import lightning as L, torch
    from torch.utils.data import DataLoader, TensorDataset
    from lvdm.callbacks.checkpoint import RunCheckpoint

    root, max_steps = Path(sys.argv[1]), int(sys.argv[2])

    class Big(L.LightningModule):  # 8 MB of weights: a checkpoint write takes a noticeable time
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(1448, 1448)
        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).pow(2).mean()
        def on_train_start(self):
            (root / "started").touch()
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", default_root_dir=root, logger=False,
                        callbacks=[RunCheckpoint(every_n_train_steps=1, save_top_k=2, monitor="step", mode="max", filename="{step}")],
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Big(), DataLoader(TensorDataset(torch.randn(64, 1448)), batch_size=4), ckpt_path="last")
''')


def kill_and_resume(root: Path, kills: int, max_steps: int = 10_000, seed: int = 0) -> dict:
    """Start the child, kill -9 it at a random moment after training started, check that the
    newest valid checkpoint loads, repeat; then let the last run finish ``max_steps``."""
    rng = random.Random(seed)
    script = root / "child.py"
    script.write_text(CHILD)
    env_base = {"PYTHONPATH": ":".join(sys.path)}
    stats = {"kills": 0, "during_write": 0, "resumed_steps": []}
    for i in range(kills + 1):
        (root / "started").unlink(missing_ok=True)
        tmpdir = "/dev/shm" if i % 2 == 0 else str(root)  # every other run: TMPDIR on another filesystem
        last = i == kills
        proc = subprocess.Popen([sys.executable, str(script), str(root), str(max_steps if last else 10**9)],
                                env={**env_base, "TMPDIR": tmpdir, "PATH": "/usr/bin:/bin"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if last:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()[-3000:]
            break
        while not (root / "started").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()  # SIGKILL
        proc.wait()
        stats["kills"] += 1
        folder = root / "checkpoints"
        stats["during_write"] += any(folder.glob(".*.tmp-*"))
        newest = newest_valid_checkpoint(folder)
        if newest is not None:  # a kill before the first save has nothing to resume
            stats["resumed_steps"].append(torch.load(newest, map_location="cpu", weights_only=True)["global_step"])
    final = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    stats["final_step"] = final["global_step"]
    return stats


def test_kill_9_then_resume_fast(tmp_path):
    stats = kill_and_resume(tmp_path, kills=1, max_steps=20)
    assert stats["kills"] == 1
    assert stats["final_step"] >= 20
    assert stats["resumed_steps"] == sorted(stats["resumed_steps"])  # never went backwards


@pytest.mark.slow
def test_kill_9_twenty_times_then_resume(tmp_path):
    stats = kill_and_resume(tmp_path, kills=20, max_steps=400, seed=1)
    print(f"\nkill -9 x{stats['kills']}: {stats['during_write']} during a checkpoint write, "
          f"resumed from steps {stats['resumed_steps']}, finished at step {stats['final_step']}")
    assert stats["final_step"] >= 200
    assert stats["resumed_steps"] == sorted(stats["resumed_steps"])
