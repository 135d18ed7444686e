"""The smoke run of benchmarks/bench_curation.py: every stage runs and the cores-per-H100 line
is printed (no timing assertions)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_curation_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_curation", ROOT / "benchmarks/bench_curation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    result = bench.main(["--preset", "smoke", "--repeat", "1", "--train_samples_per_s", "10", "--json", str(out)])
    text = capsys.readouterr().out
    assert "| score: motion (4 Farneback pairs at 256) |" in text and "cores** of training-reader decode" in text
    assert all(rate > 0 for rate in result["clips_per_s_per_core"].values())
    reader = result["clips_per_s_per_core"]["training reader: decode_clip 16×256×256"]
    assert result["cores_per_h100_reader"] == 10 / reader and result["train_source"] == "given on the command line"
    assert json.loads(out.read_text())["preset"] == "smoke"
