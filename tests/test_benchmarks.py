"""The CPU smoke run of benchmarks/bench_dit.py: both models train and sample through the same
harness and the table prints the lvdm / Latte ratios (no timing assertions)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("bench_dit", ROOT / "benchmarks/bench_dit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_prints_lvdm_vs_latte_table(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "r.json"
    result = bench.main(["--preset", "cpu-smoke", "--train_iters", "1", "--sampling_steps", "2", "--json", str(out)])
    text = capsys.readouterr().out
    assert "| lvdm DiT (STDiT) |" in text and "| diffusers Latte |" in text
    assert "faster step" in text and "faster sampling" in text
    assert "lvdm adaLN single" in text  # the STDiT-XL/2-sized model of the issue is the adaLN-single one
    rows = result["rows"]
    for name in ("lvdm", "latte"):
        assert rows[name]["train_ms_per_step"] > 0 and rows[name]["sampling_s"] > 0
        assert rows[name]["fwd_gflops_per_sample"] > 0 and rows[name]["params_m"] > 0
    # same width/depth/heads: parameter counts within 25% of each other
    assert 0.75 < rows["lvdm"]["params_m"] / rows["latte"]["params_m"] < 1.25
    assert set(result["ratios"]) == {"training_speedup", "training_flops_per_s", "sampling_speedup"}
    # lvdm's STDiT in Latte's layout: the same model as diffusers' Latte, FLOP for FLOP
    assert "| lvdm STDiT, Latte layout |" in text and "same architecture" in text
    assert rows["lvdm-latte"]["params_m"] == rows["latte"]["params_m"]
    # FLOPs: lvdm projects the caption's keys/values once per clip, diffusers' Latte once per frame
    assert 0.9 < result["latte_layout_ratios"]["flops_ratio"] <= 1.0
    assert json.loads(out.read_text())["preset"] == "cpu-smoke"


def test_bench_compressors_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_compressors", ROOT / "benchmarks/bench_compressors.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--size", "tiny", "--frames", "4", "--resolution", "32", "--repeats", "1"])
    names = [r["compressor"] for r in result["rows"]]
    assert names == ["pixels", "SD-VAE per frame", "CogVideoX", "Wan", "LTXVideo", "HunyuanVideo", "Mochi",
                     "lvdm causal 3D VAE", "lvdm VQ-VAE"]
    frames = {r["compressor"]: r["frames"] for r in result["rows"]}
    assert frames["pixels"] == 4 and frames["Wan"] == 5 and frames["CogVideoX"] == 9 and frames["Mochi"] == 7
    assert all(r["encode_fps"] > 0 and r["decode_fps"] > 0 for r in result["rows"])
    assert result["cached_vs_in_loop"]["ratio"] > 0
    assert "caching is" in capsys.readouterr().out
