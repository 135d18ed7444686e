"""The docs stay true to the code: the site builds with ``mkdocs build --strict`` (broken links
and anchors fail it), the README's package map names exactly the packages and modules under
``src/lvdm``, and the commands reference names every command ``lvdm --help`` offers."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lvdm import cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "lvdm"


def package_map(readme: str) -> set[str]:
    """The first-column names (``models/``, ``cli.py``) of the README's package-map table."""
    section = readme.split("## Package map", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([\w.]+/?)` \|", section, flags=re.MULTILINE))


def code_map() -> set[str]:
    """What the map must list: every subpackage and every top-level module but ``__init__``."""
    packages = {f"{p.parent.name}/" for p in PACKAGE.glob("*/__init__.py")}
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    return packages | modules


def test_readme_package_map_matches_src():
    listed = package_map((ROOT / "README.md").read_text(encoding="utf-8"))
    assert listed, "README.md has no '## Package map' table"
    expected = code_map()
    assert not listed - expected, f"README package map lists what src/lvdm lacks: {sorted(listed - expected)}"
    assert not expected - listed, f"README package map misses: {sorted(expected - listed)}"


def test_commands_reference_names_every_command():
    reference = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    commands = [f"lvdm {name}" for name in (*cli.LIGHTNING_COMMANDS, *cli.COMMANDS)]
    commands += [f"lvdm {group} {name}" for group, sub in cli.GROUPS.items() for name in sub]
    missing = [c for c in commands if f"`{c}`" not in reference]
    assert not missing, f"docs/commands.md does not name: {missing}"


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install mkdocs, or the dev extra)")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "results" / "index.html").is_file()  # benchmarks/RESULTS.md, through docs/results.md
