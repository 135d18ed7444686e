"""benchmarks/bench_lowmem.py at toy size: the table prints, and on the CPU the measured tensor
bytes (states on the device, swapped blocks on the host) equal the prediction."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_lowmem.py"


@pytest.mark.slow
def test_bench_lowmem_table_on_the_cpu(capsys):
    spec = importlib.util.spec_from_file_location("bench_lowmem", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--hidden_size", "32", "--depth", "2", "--heads", "2", "--context_dim", "16", "--frames", "2",
                       "--size", "8"])
    assert "| lora + fp8 + swap + ckpt" in capsys.readouterr().out
    for row in rows:
        predicted, measured = row["predicted"], row["measured"]
        assert predicted["device_states"] == measured["device_states"], row["config"]
        assert predicted["host_swapped"] == measured["host_swapped"], row["config"]
        assert measured["peak"] is None  # no allocator peak on the CPU
