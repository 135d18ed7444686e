"""kill -9 at random moments (many of them during checkpoint writes, TMPDIR on another
filesystem) and resume with ``ckpt_path="last"``: every resume finds a valid checkpoint and
the run reaches its last step. Then ``lvdm fit`` killed at random and at epoch boundaries:
every resumed run trains on the uninterrupted run's batches and logs into one folder.
``pytest -m slow`` runs the 20-kill versions."""

import json
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lvdm.checkpoints.atomic import newest_valid_checkpoint

CHILD = textwrap.dedent('''
    import sys
    from pathlib import Path
    import lightning as L, torch
    from torch.utils.data import DataLoader, TensorDataset
    from lvdm.training.callbacks.run_checkpoint import RunCheckpoint

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


# ------------------------------------------------------------------ lvdm fit, data and logs
# The acceptance test of finding 6: `lvdm fit --ckpt_path last` killed with -9 at random moments
# and exactly at epoch boundaries (just after the checkpoint of an epoch's last batch) trains on
# the batches of the uninterrupted run, and the whole run logs into one version folder.

RECORDER = textwrap.dedent('''
    import json, os, signal
    from pathlib import Path
    import lightning as L

    class Record(L.Callback):
        """Appends [global step, batch keys] per step to `path`; kills its own process with -9
        at the start of the step after `kill_at` steps (their checkpoints written)."""
        def __init__(self, path: str, kill_at: int = -1):
            self.path, self.kill_at = Path(path), kill_at
        def on_train_start(self, trainer, pl_module):
            (self.path.parent / "started").touch()
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            with open(self.path, "a") as f:
                f.write(json.dumps([trainer.global_step, list(batch["key"])]) + "\\n")
''')

EPOCH = 6  # batches per epoch: 24 samples_per_epoch / batch_size 4


def _recipe(root: Path, data: Path) -> Path:
    recipe = root / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f'''
        seed_everything: 0
        trainer:
          accelerator: cpu
          max_steps: 1000
          limit_val_batches: 0
          enable_progress_bar: false
          enable_model_summary: false
          default_root_dir: {root / "run"}
          callbacks:
            - class_path: lvdm.training.callbacks.run_checkpoint.RunCheckpoint
              init_args: {{every_n_train_steps: 1, save_top_k: 0}}
        model:
          class_path: lvdm.training.module.LatentDiffusionModule
          init_args:
            denoiser:
              class_path: lvdm.models.dit.DiT
              init_args: {{in_channels: 3, patch_size: [2, 8, 8], hidden_size: 16, depth: 1, num_heads: 2,
                           conditioning: adaln, context_dim: 16}}
            text_encoder:
              class_path: lvdm.text.words.WordTextEncoder
              init_args: {{dim: 16, max_length: 4}}
            objective: lvdm.diffusion.objectives.RectifiedFlow
            compressor: lvdm.compressors.pixels.PixelCompressor
        data:
          class_path: lvdm.data.datamodule.VideoDataModule
          init_args: {{train_shards: "{data}/train-*.tar", batch_size: 4, num_frames: 4, resolution: 32,
                       samples_per_epoch: {EPOCH * 4}, shuffle_buffer: 8}}
    '''))
    return recipe


def _launch(root: Path, recipe: Path, records: Path, max_steps: int, kill_at: int = -1) -> subprocess.Popen:
    args = [sys.executable, "-m", "lvdm.cli", "fit", "--config", str(recipe), "--trainer.max_steps", str(max_steps),
            "--trainer.callbacks+=recorder.Record", "--trainer.callbacks.init_args.path", str(records),
            "--trainer.callbacks.init_args.kill_at", str(kill_at), "--ckpt_path", "last"]
    env = {"PYTHONPATH": ":".join([str(root), *sys.path]), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _fit_in_process(root: Path, recipe: Path, records: Path, max_steps: int) -> None:
    """The uninterrupted run: the same `lvdm fit`, in this process (no second start-up)."""
    from lvdm.cli import lightning_cli

    sys.path.insert(0, str(root))
    try:
        lightning_cli(["fit", "--config", str(recipe), "--trainer.max_steps", str(max_steps),
                       "--trainer.callbacks+=recorder.Record", "--trainer.callbacks.init_args.path", str(records)])
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("recorder", None)


def _run_to_end(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]


def _read(path: Path) -> list:
    """The [step, keys] records (a line cut short by a kill is left out)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("]")]


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _saved_step(root: Path) -> int:
    newest = newest_valid_checkpoint(root / "run" / "checkpoints")
    return torch.load(newest, map_location="cpu", weights_only=True)["global_step"] if newest else 0


def kill_resume_fit(root: Path, plan: list[str], max_steps: int, seed: int = 0) -> dict:
    """Run `lvdm fit` uninterrupted to ``max_steps``; then in another folder once per entry of
    ``plan`` — ``"epoch"``: it kills itself just after the checkpoint of the next epoch's last
    batch; ``"random"``: kill -9 at a random moment 1 to 4 steps on — and resume with ``--ckpt_path
    last`` each time, until a last run reaches ``max_steps``. Returns the recorded batch keys."""
    from lvdm.shapes.synthetic import write_synthetic_dataset

    rng = random.Random(seed)
    data = root / "shapes"
    write_synthetic_dataset(str(data), num_train=32, num_val=2, shard_size=16, num_frames=4, size=32)
    base, killed = root / "uninterrupted", root / "killed"
    for folder in (base, killed):
        folder.mkdir()
        (folder / "recorder.py").write_text(RECORDER)
    _fit_in_process(base, _recipe(base, data), base / "records.jsonl", max_steps)
    recipe, records, resumed_from = _recipe(killed, data), killed / "records.jsonl", []
    for action in plan:
        (killed / "started").unlink(missing_ok=True)
        step = _saved_step(killed)
        resumed_from.append(step)
        boundary = (step // EPOCH + 1) * EPOCH
        proc = _launch(killed, recipe, records, max_steps, kill_at=boundary if action == "epoch" else -1)
        if action == "random":  # 1 to 4 new steps (whatever the machine's speed), then a random moment of a step
            target = _lines(records) + rng.randint(1, 4)
            while _lines(records) < target and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.1))
            proc.kill()
        proc.communicate(timeout=600)
        assert proc.returncode in (-9, 0), proc.stderr
    resumed_from.append(_saved_step(killed))
    _run_to_end(_launch(killed, recipe, records, max_steps))
    return {"uninterrupted": _read(base / "records.jsonl"), "resumed": _read(records), "resumed_from": resumed_from,
            "logs": sorted(p.name for p in (killed / "run" / "lightning_logs").iterdir()),
            "final_step": _saved_step(killed)}


def _check(stats: dict, max_steps: int) -> None:
    expected = {step: keys for step, keys in stats["uninterrupted"]}
    assert sorted(expected) == list(range(1, max_steps + 1))
    for step, keys in stats["resumed"]:  # every batch of every resumed run, replayed steps included
        assert keys == expected[step], f"step {step}: {keys} != {expected[step]} (resumed from {stats['resumed_from']})"
    assert {step for step, _ in stats["resumed"]} == set(expected)
    assert stats["final_step"] == max_steps
    assert stats["logs"] == ["version_0"]


def test_kill_9_at_an_epoch_boundary_then_resume_fit(tmp_path):
    """The fast variant: one kill, just after the checkpoint of the first epoch's last batch."""
    stats = kill_resume_fit(tmp_path, ["epoch"], max_steps=EPOCH + 3)
    assert stats["resumed_from"] == [0, EPOCH]
    _check(stats, EPOCH + 3)


@pytest.mark.slow
def test_kill_9_twenty_times_at_epoch_boundaries_and_at_random_then_resume_fit(tmp_path):
    plan = ["epoch", "random"] * 10
    stats = kill_resume_fit(tmp_path, plan, max_steps=20 * EPOCH, seed=2)
    print(f"\nlvdm fit, kill -9 x{len(plan)}: resumed from steps {stats['resumed_from']}")
    steps = stats["resumed_from"]
    assert steps == sorted(steps) and steps[-1] < 20 * EPOCH  # every kill interrupted training
    assert len({step for step in steps if step % EPOCH == 0 and step > 0}) >= 5  # epoch boundaries among them
    _check(stats, 20 * EPOCH)
