"""scripts/opensora_parity.py without an Open-Sora checkout (the suite never fetches one): its
command line, its refusal of a folder that is not a checkout, and its result table."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "opensora_parity.py"


def _script(monkeypatch):
    spec = importlib.util.spec_from_file_location("opensora_parity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_help_names_the_checkout_and_the_checks():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--opensora-src" in out and "{sampler,stdit3,stdit}" in out
    assert "xformers" in out  # the docstring says what stands in for what


def test_a_folder_that_is_not_a_checkout_is_refused_by_name(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=f"{tmp_path} is not an Open-Sora checkout"):
        _script(monkeypatch).install(tmp_path)


def test_table_passes_on_a_tolerance_relative_to_the_values_and_reports_errors(monkeypatch):
    script = _script(monkeypatch)
    rows = [script.Row("large", diff=5e-4, value=10.0), script.Row("small", diff=2e-4, value=0.5),
            script.Row("broken", error="ValueError: odd latent")]
    assert [r.passed for r in rows] == [True, False, False]
    lines = script.format_table(rows).splitlines()
    assert lines[2].split()[-1] == "pass" and lines[3].split()[-1] == "FAIL"
    assert lines[4].endswith("FAIL (ValueError: odd latent)")
    assert lines[-1].startswith("pass: max|diff| <= 0.0001 * max(1, max|value|)")
