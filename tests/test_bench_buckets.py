"""The smoke size of benchmarks/bench_buckets.py: both comparisons run and print their tables
(no timing assertions)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_prints_buckets_and_text_cache_tables(capsys):
    spec = importlib.util.spec_from_file_location("bench_buckets", ROOT / "benchmarks/bench_buckets.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--preset", "smoke", "--warmup", "1"])
    out = capsys.readouterr().out
    assert "| buckets |" in out and "| crop 4x32x32 |" in out and "| T5 every step |" in out
    crop, buckets = result["buckets_vs_crop"]["crop 4x32x32"], result["buckets_vs_crop"]["buckets"]
    assert buckets["tokens_per_s"] > 0 and crop["tokens_per_s"] > 0
    assert buckets["content_kept"] > crop["content_kept"]  # cropping loses the images and most frames
    assert all(r["ms_per_step"] > 0 for r in result["text"].values())
