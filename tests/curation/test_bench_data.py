"""The smoke run of benchmarks/bench_data.py: every stage runs and the tables print (no timing assertions)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_data_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_data", ROOT / "benchmarks/bench_data.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--clips", "2", "--frames", "12", "--size", "32", "--num_frames", "4", "--resolution", "16",
                         "--repeats", "1", "--json", str(tmp_path / "r.json")])
    text = capsys.readouterr().out
    assert "| ingest (source clips) |" in text and "naive: decode every frame" in text and "cores to feed one H100" in text
    assert result["ingest_accepted"] == 2 and set(result["clips_per_s"]) == {"ingest", "split", "filter"}
    assert result["reader"]["reader_clips_per_s"] > 0 and result["cores_per_h100"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["args"]["clips"] == 2
