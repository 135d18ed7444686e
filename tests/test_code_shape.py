"""The shape of the code in ``src/lvdm``: no long functions, no repeated blocks.

* A function or method is at most :data:`MAX_FUNCTION_LINES` lines, not counting its docstring
  (a CLI command's docstring is its ``--help`` text: documenting every option must not push
  the code into pieces).
* No block of more than :data:`MAX_REPEATED_LINES` consecutive lines stands twice: lines are
  compared stripped of indentation, blank and comment-only lines dropped, so a block copied to
  another indentation is still found. One concept, one home.
"""

from __future__ import annotations

import ast
import hashlib
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lvdm"
MAX_FUNCTION_LINES = 80
MAX_REPEATED_LINES = 10

#: Offenders in files other engineers were changing while this test was written (``path:name``).
#: Each is split in its own change; the entry goes with it.
KNOWN_LONG_FUNCTIONS: set[str] = set()

#: Repeated blocks in those files (``path`` pairs, sorted). Same rule as above.
KNOWN_REPEATS: set[tuple[str, str]] = set()


def _sources() -> dict[str, str]:
    return {str(p.relative_to(SRC)): p.read_text() for p in sorted(SRC.rglob("*.py"))}


def _docstring_lines(node: ast.AST) -> int:
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0].end_lineno - body[0].lineno + 1
    return 0


def long_functions(sources: dict[str, str], limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``path:name`` → lines (docstring excluded) of every function longer than ``limit``."""
    found = {}
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
                if length > limit:
                    found[f"{path}:{node.name}"] = length
    return found


def _code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, stripped line) of the lines that are code."""
    return [(i, s) for i, line in enumerate(text.splitlines(), 1) if (s := line.strip()) and not s.startswith("#")]


def repeated_blocks(sources: dict[str, str], window: int = MAX_REPEATED_LINES + 1) -> list[tuple[str, str]]:
    """Every pair of places where ``window`` consecutive code lines are the same, as
    ``("a.py:10", "b.py:40")`` (one row per repeated run: overlapping windows of one run are
    reported once)."""
    places: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for path, text in sources.items():
        lines = _code_lines(text)
        for k in range(len(lines) - window + 1):
            digest = hashlib.blake2b("\n".join(s for _, s in lines[k:k + window]).encode(), digest_size=12).hexdigest()
            places[digest].append((path, k, lines[k][0]))
    pairs, seen = [], set()
    for found in places.values():
        for a in range(len(found)):
            for b in range(a + 1, len(found)):
                (pa, ka, la), (pb, kb, lb) = found[a], found[b]
                run = (pa, pb, ka - kb)  # windows of one run keep the same offset
                if run in seen or (pa == pb and abs(ka - kb) < window):
                    continue
                seen.add(run)
                pairs.append((f"{pa}:{la}", f"{pb}:{lb}"))
    return pairs


def test_no_function_is_longer_than_the_limit():
    found = long_functions(_sources())
    unexpected = {k: v for k, v in found.items() if k not in KNOWN_LONG_FUNCTIONS}
    assert not unexpected, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {unexpected}"
    stale = KNOWN_LONG_FUNCTIONS - set(found)
    assert not stale, f"no longer over the limit, remove from KNOWN_LONG_FUNCTIONS: {sorted(stale)}"


def test_no_block_is_repeated():
    found = repeated_blocks(_sources())
    unexpected = [p for p in found if tuple(sorted(x.split(":")[0] for x in p)) not in KNOWN_REPEATS]
    assert not unexpected, f"blocks of more than {MAX_REPEATED_LINES} lines stand twice (give them one home): {unexpected}"


def test_the_detectors_can_fail():
    block = "\n".join(f"x{i} = f({i})" for i in range(11))
    a = f"def one():\n    {block.replace(chr(10), chr(10) + '    ')}\n"
    b = f"class K:\n    def two(self):\n        # a comment\n\n        {block.replace(chr(10), chr(10) + '        ')}\n"
    assert repeated_blocks({"a.py": a, "b.py": b}) == [("a.py:2", "b.py:5")]
    assert repeated_blocks({"a.py": a, "b.py": b.replace("x10", "y10")}) == []
    long = "def f():\n    '''doc\n    more'''\n" + "    x = 1\n" * 80
    assert long_functions({"m.py": long}) == {"m.py:f": 81}
    assert long_functions({"m.py": long.replace("    x = 1\n", "", 1)}) == {}
