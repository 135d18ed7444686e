"""SLURM requeue with lvdm's checkpoints: SIGUSR1 → Lightning saves hpc_ckpt_N.ckpt (atomically,
through RunCheckpoint's checkpoint IO) and calls `scontrol requeue`; SLURM then kills the job;
the requeued job's `--ckpt_path last` resumes from that checkpoint. SLURM is simulated: its
environment variables, a fake `scontrol` on PATH that records the call, and the signals."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import torch

CHILD = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path
    import lightning as L, torch
    from torch.utils.data import DataLoader, TensorDataset
    from lvdm.training.callbacks.run_checkpoint import RunCheckpoint

    root, max_steps = Path(sys.argv[1]), int(sys.argv[2])

    class Slow(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
        def training_step(self, batch, batch_idx):
            time.sleep(0.05)
            return self.net(batch[0]).pow(2).mean()
        def on_train_start(self):
            (root / "started.json").write_text(json.dumps({"step": self.trainer.global_step,
                                                           "ckpt_path": self.trainer.ckpt_path}))
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, default_root_dir=root, logger=False,
                        callbacks=[RunCheckpoint(every_n_train_steps=10_000)], enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(Slow(), DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4), ckpt_path="last")
''')


def test_sigusr1_checkpoints_requeues_and_the_next_job_resumes(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {"PYTHONPATH": ":".join(sys.path), "PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "4242",
           "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "lvdm", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS_PER_NODE": "1"}
    root = tmp_path / "run"
    root.mkdir()

    first = subprocess.Popen([sys.executable, str(script), str(root), "100000"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (root / "started.json").exists():
        assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:]
        time.sleep(0.1)
    time.sleep(1.0)  # a few steps
    first.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit (#SBATCH --signal=SIGUSR1@90)
    while not (tmp_path / "scontrol.log").exists():
        assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:]
        time.sleep(0.1)
    first.kill()  # the time limit: SLURM kills the job
    first.wait()
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    saved = root / "hpc_ckpt_1.ckpt"
    step = torch.load(saved, map_location="cpu", weights_only=True)["global_step"]
    assert step > 0

    (root / "started.json").unlink()
    second = subprocess.run([sys.executable, str(script), str(root), str(step + 3)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    started = json.loads((root / "started.json").read_text())
    assert started == {"step": step, "ckpt_path": str(saved)}
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 3
