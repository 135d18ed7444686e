"""Exact resume of a LoRA run under DDP and DeepSpeed ZeRO-2 on two CPU processes (gloo): 4 steps
straight against 2 + resume 2 from the adapter-only step-2 checkpoint give the same losses,
adapter and EMA of the adapter, bit for bit, on both ranks (lora_resume_probe.py runs the ranks).
FSDP runs as FSDP2 (strategies/fsdp2.yaml; torch's first FullyShardedDataParallel refuses to run
without an accelerator), without the EMA, which refuses sharded parameters."""

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(strategy: str, out: Path) -> list[dict]:
    """Start the two ranks of lora_resume_probe.py as an external launcher would; their records."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), WORLD_SIZE="2", NODE_RANK="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    procs = [subprocess.Popen([sys.executable, str(HERE / "lora_resume_probe.py"), strategy, str(out)],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [proc.communicate(timeout=600)[0] for proc in procs]
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-6000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_resume_is_exact(ranks: list[dict], ema: bool = True) -> None:
    for rank in ranks:
        straight, resumed = rank["straight"], rank["resumed"]
        assert straight["step"] == resumed["step"] == 4 and len(resumed["losses"]) == 2
        assert resumed["losses"] == straight["losses"][2:]
        assert straight["adapter"] and all(".lora_" in k for k in straight["adapter"])
        assert _equal(resumed["adapter"], straight["adapter"])
        assert resumed["ema_updates"] == 4 * ema and _equal(resumed["ema"], straight["ema"])
    assert _equal(ranks[0]["straight"]["adapter"], ranks[1]["straight"]["adapter"])  # replicas agree
    assert ranks[0]["straight"]["losses"] != ranks[1]["straight"]["losses"]  # each rank had its own batches


# ~25 s each on an idle 2-core machine (two processes start, import and fit twice), so slow; the
# default run keeps the single-process exact resume (tests/callbacks/test_lora_training.py).
# zero2: float32; zero2_bf16: strategies/zero2.yaml's bf16 weights with float32 masters.
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero2_bf16"])
def test_lora_resume_is_exact_on_two_cpu_processes(strategy, tmp_path):
    if strategy.startswith("zero2"):
        pytest.importorskip("deepspeed")
    ranks = run_ranks(strategy, tmp_path)
    check_resume_is_exact(ranks)
    ckpt = tmp_path / "ckpt" / "step=2.ckpt"
    if strategy == "ddp":  # the adapter-only checkpoint
        state = torch.load(ckpt, weights_only=True)["state_dict"]
    else:  # DeepSpeed's module file (exclude_frozen_parameters): the adapter alone too
        state = torch.load(next(ckpt.rglob("mp_rank_00_model_states.pt")), weights_only=False)["module"]
    assert state and set(state) == set(ranks[0]["straight"]["adapter"])


@pytest.mark.slow  # ~40 s on an idle 2-core machine: three fits in two processes
def test_lora_under_fsdp2_matches_ddp_resumes_exactly_and_loads(tmp_path, tiny_hparams, assert_close_scaled):
    """FSDP2 on two CPU processes: the same losses and adapter as DDP on the same per-rank batches
    (DDP is the reference rather than one process on the global batch, because each rank draws its
    own noise), exact resume from the adapter-only checkpoint, and that checkpoint (one file of
    plain tensors, gathered on rank 0) read back with the adapter merged (load_module's path for an
    adapter checkpoint, here with the base given, as the probe's run has no InitFrom to record)."""
    from lvdm.checkpoints.load import build_module
    from lvdm.finetune.adapter_files import load_adapter_module

    ranks = run_ranks("fsdp2", tmp_path)
    check_resume_is_exact(ranks, ema=False)
    for rank in ranks:
        straight, reference = rank["straight"], rank["reference"]
        assert_close_scaled(torch.tensor(straight["losses"]), torch.tensor(reference["losses"]), rtol=1e-5)
        for name, value in reference["adapter"].items():
            assert_close_scaled(straight["adapter"][name], value, rtol=1e-5)
    ckpt = torch.load(tmp_path / "ckpt" / "step=4.ckpt", weights_only=True)
    adapter = ranks[0]["straight"]["adapter"]
    assert set(ckpt["state_dict"]) == set(adapter) and all(type(v) is torch.Tensor for v in ckpt["state_dict"].values())
    spec = importlib.util.spec_from_file_location("lora_resume_probe", HERE / "lora_resume_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    base = build_module(tiny_hparams())  # the probe's module, from the recipe the CLI would store
    base.load_state_dict(probe.module().state_dict())
    torch.save({"state_dict": base.state_dict(), "hyper_parameters": tiny_hparams()}, tmp_path / "base.ckpt")
    ckpt["hyper_parameters"] = tiny_hparams()  # (the probe builds its module in Python: no recipe stored)
    torch.save(ckpt, tmp_path / "adapter.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the base's fingerprint is the one the adapter was trained on
        loaded = load_adapter_module(tmp_path / "adapter.ckpt", base=str(tmp_path / "base.ckpt"))  # lvdm lora merge --base
    merged = loaded.module.denoiser.state_dict()
    for name, value in base.denoiser.state_dict().items():  # W + (alpha / rank) B A, alpha 4, rank 2
        prefix = f"denoiser.{name.removesuffix('.weight')}"
        if f"{prefix}.lora_A.default.weight" in adapter:
            value = value + 2.0 * adapter[f"{prefix}.lora_B.default.weight"] @ adapter[f"{prefix}.lora_A.default.weight"]
        assert_close_scaled(merged[name], value, rtol=1e-5)
