"""No float comparison in the suite rests on an absolute tolerance alone below 1e-5: float32
carries about 1e-7 of the largest value it touches, so on values of 10-30 another CPU's kernels
differ by 1e-5 or more. Such a comparison needs a relative tolerance (the conftest's
``assert_close_scaled`` scales atol by the values too)."""

import ast
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
ABSOLUTE = {"atol", "abs", "abs_tol"}
RELATIVE = {"rtol", "rel", "rel_tol"}


def _number(node):
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return None  # computed (e.g. scaled by the values): fine
    return value if isinstance(value, (int, float)) else None


def absolute_only(source: str) -> list[int]:
    """Lines of calls with a literal absolute tolerance in (0, 1e-5) and no non-zero relative one."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        given = {k.arg: _number(k.value) for k in node.keywords if k.arg in ABSOLUTE | RELATIVE}
        tiny = any(name in ABSOLUTE and value is not None and 0 < value < 1e-5 for name, value in given.items())
        relative = any(name in RELATIVE and value != 0 for name, value in given.items())
        if tiny and not relative:
            lines.append(node.lineno)
    return lines


def test_the_check_finds_an_absolute_only_tolerance():
    # the texts below lack an rtol on purpose: they are what the check must find
    assert absolute_only("torch.allclose(a, b, atol=1e-6)\nx == pytest.approx(y, abs=1e-7)") == [1, 2]  # no rtol
    assert absolute_only("assert_close(a, b,\n  rtol=0, atol=1e-8)") == [1]
    assert absolute_only("assert_close(a, b, rtol=1e-5, atol=1e-6)\nallclose(a, b, atol=1e-4)") == []
    assert absolute_only("assert_close(a, b, rtol=0, atol=0)\nassert_close(a, b, atol=1e-5 * a.abs().max())") == []


def test_no_test_compares_floats_with_an_absolute_tolerance_alone():
    found = [f"{path.relative_to(TESTS)}:{line}" for path in sorted(TESTS.rglob("*.py"))
             for line in absolute_only(path.read_text())]
    assert not found, f"absolute-only tolerance below 1e-5 (use rtol or assert_close_scaled): {', '.join(found)}"


def test_scaled_comparison_allows_rounding_and_catches_a_real_error(assert_close_scaled):
    expected = torch.tensor([35.0, -16.0, 1e-3])  # an output of magnitude 35 with an element near 0
    rounded = expected + torch.tensor([4e-6, -3e-6, 6e-5])  # what another CPU's kernels gave (float32)
    assert_close_scaled(rounded, expected)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(rounded, expected, rtol=1e-5, atol=1e-6)  # the old element-wise check
    with pytest.raises(AssertionError):
        assert_close_scaled(expected * (1 + 1e-4), expected)  # a 1e-4 relative error is a bug
