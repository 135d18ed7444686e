"""``lvdm data filter``: keep the samples whose json fields satisfy expressions.

An expression is parsed with :mod:`ast` and only these forms are accepted: field names,
constants (numbers, strings, ``True``/``False``/``None``), tuples/lists of constants (for
``in``), comparisons (``< <= > >= == != in not in``), ``and``/``or``/``not``, and arithmetic
(``+ - * / // %``, unary ``-``). Anything else — calls, attributes, subscripts, lambdas,
``**`` — is refused before any sample is read, so an expression can never run code.
Arithmetic is on numbers only: text or tuple constants in it are refused (``'a' * 999999999``
would build a gigabyte), and a text field in it gives ``None``.

A name is the sample json's top-level field, and must be one the dataset has (its manifest's
columns or its first sample's json): a misspelt name fails before anything is written, with
the closest names. A field a sample lacks is ``None``. A comparison with ``None`` on either
side (other than ``==``/``!=``) is false, arithmetic with ``None`` gives ``None``, and ``not
None`` is true: ``motion > 0.5`` drops samples that were never scored (and images, whose
motion is 0: write ``(motion > 0.5 or kind == 'image')`` to keep them), ``not duplicate_of``
keeps those that duplicate nothing.
"""

from __future__ import annotations

import ast
import difflib
import json
import sys
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

from lvdm.curation.engine import failed, make_engine
from lvdm.curation.split import prepare_stage_output
from lvdm.data.schema import MANIFEST_NAME, REJECTS_NAME, manifest_row, media_entry, write_manifest, write_rejects
from lvdm.data.shards import ShardWriter, read_shard, resolve_shards

__all__ = ["Condition", "parse_conditions", "dataset_fields", "check_fields", "filter_dataset"]

_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b}
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


class _Checker(ast.NodeVisitor):
    """Refuses every node outside the allowed grammar, naming it."""

    ALLOWED = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.BinOp,
               ast.Compare, ast.Name, ast.Load, ast.Constant, ast.Tuple, ast.List, *_COMPARE, *_ARITHMETIC)

    def __init__(self, text: str) -> None:
        self.text = text

    def generic_visit(self, node: ast.AST) -> None:
        if not isinstance(node, self.ALLOWED):
            raise ValueError(f"filter expression {self.text!r}: {type(node).__name__} is not allowed "
                             f"(only field names, constants, comparisons, and/or/not and + - * / // %)")
        if isinstance(node, (ast.Tuple, ast.List)) and not all(isinstance(e, ast.Constant) for e in node.elts):
            raise ValueError(f"filter expression {self.text!r}: a tuple or list may hold constants only")
        if isinstance(node, ast.BinOp) and any(_is_text(side) for side in (node.left, node.right)):
            raise ValueError(f"filter expression {self.text!r}: arithmetic on text or tuples "
                             f"({ast.unparse(node)}) is not allowed; arithmetic is on numbers only")
        super().generic_visit(node)


def _is_text(node: ast.AST) -> bool:
    """A constant string/bytes or a tuple/list: ``'a' * 10**9`` would build a gigabyte."""
    return isinstance(node, (ast.Tuple, ast.List)) or (isinstance(node, ast.Constant)
                                                        and isinstance(node.value, (str, bytes)))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float))  # bool included


def _evaluate(node: ast.AST, fields: dict) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, fields)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return fields.get(node.id)
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(e.value for e in node.elts)
    if isinstance(node, ast.BoolOp):
        values = (_evaluate(v, fields) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, fields)
        if isinstance(node.op, ast.Not):
            return not value
        if not _number(value):
            return None
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, fields), _evaluate(node.right, fields)
        if not (_number(left) and _number(right)):  # None, or text: a field's string * 10**9 is no number
            return None
        try:
            return _ARITHMETIC[type(node.op)](left, right)
        except (ZeroDivisionError, OverflowError):
            return None
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, fields)
        for op, right_node in zip(node.ops, node.comparators):
            right = _evaluate(right_node, fields)
            if (left is None or right is None) and not isinstance(op, (ast.Eq, ast.NotEq)):
                return False
            try:
                if not _COMPARE[type(op)](left, right):
                    return False
            except TypeError:  # "abc" < 3: the sample does not satisfy the condition
                return False
            left = right
        return True
    raise ValueError(f"unexpected {type(node).__name__}")  # unreachable after _Checker


@dataclass(frozen=True)
class Condition:
    """One checked condition: its source text and parsed tree."""

    text: str
    tree: ast.Expression

    def __call__(self, fields: dict) -> bool:
        return bool(_evaluate(self.tree, fields))


def _parse(text: str) -> ast.Expression:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"filter expression {text!r} is not valid: {exc.msg}") from exc
    _Checker(text).visit(tree)
    return tree


def parse_conditions(expressions: Union[str, list[str]]) -> list[Condition]:
    """The conditions of one or more expressions: each expression's top-level ``and`` terms are
    separate conditions (so the report can say which removed what); all must hold."""
    texts = [expressions] if isinstance(expressions, str) else list(expressions)
    if not texts:
        raise ValueError("no filter expression given")
    conditions = []
    for text in texts:
        tree = _parse(text)
        terms = tree.body.values if isinstance(tree.body, ast.BoolOp) and isinstance(tree.body.op, ast.And) else [tree.body]
        conditions += [Condition(ast.unparse(term), ast.Expression(term)) for term in terms]
    return conditions


def _field_names(conditions: list[Condition]) -> set[str]:
    return {node.id for c in conditions for node in ast.walk(c.tree) if isinstance(node, ast.Name)}


def dataset_fields(shards: list[str]) -> set[str]:
    """The field names a dataset has: its manifests' columns (the json's scalar fields) and the
    json fields of its first sample (lists and objects too); empty when neither can be read."""
    import pyarrow.parquet as pq

    names: set[str] = set()
    for folder in sorted({Path(shard).parent for shard in shards}):
        if (folder / MANIFEST_NAME).is_file():
            names |= set(pq.read_schema(folder / MANIFEST_NAME).names)
    for sample in read_shard(shards[0]) if shards else ():
        try:
            fields = json.loads(sample.get("json", b"{}"))
        except ValueError:
            break
        names |= set(fields) if isinstance(fields, dict) else set()
        break
    return names


def check_fields(conditions: list[Condition], known: set[str]) -> None:
    """Refuse names the dataset does not have, with the closest ones it has (a misspelt field is
    ``None`` on every sample: ``motoin > 0.5`` would silently keep nothing)."""
    unknown = sorted(_field_names(conditions) - known) if known else []
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        raise ValueError(f"filter: unknown field {', '.join(hints)}; the dataset's fields: {', '.join(sorted(known))}")


def _filter_shard(task: tuple[str, str, list[str]]) -> dict:
    source, out, expressions = task
    conditions = parse_conditions(expressions)
    rows, rejects = [], []
    failing = [0] * len(conditions)
    removed = [0] * len(conditions)
    with ShardWriter(str(Path(out) / Path(source).name), max_count=None) as sink:
        for sample in read_shard(source):
            key = sample["__key__"]
            try:
                fields = json.loads(sample["json"])
                if not isinstance(fields, dict):
                    raise ValueError(f"json holds a {type(fields).__name__}, not an object")
                ext, data = media_entry(sample)
            except (KeyError, ValueError) as exc:
                rejects.append((key, f"unreadable sample: {exc}"))
                continue
            results = [condition(fields) for condition in conditions]
            for i, ok in enumerate(results):
                failing[i] += not ok
            if not all(results):
                first = results.index(False)
                removed[first] += 1
                rejects.append((key, f"filtered: {conditions[first].text}"))
                continue
            shard = sink.write({"key": key, ext: data, "txt": sample.get("txt", b""), "json": sample["json"]})
            rows.append(manifest_row(key, shard, fields))
    return {"rows": rows, "rejects": rejects, "failing": failing, "removed": removed}


def filter_dataset(
    source: Union[str, list[str]],
    out: str,
    keep: Union[str, list[str]],
    engine: Literal["local", "ray"] = "local",
    workers: Optional[int] = None,
    ray_address: Optional[str] = None,
    overwrite: bool = False,
) -> dict:
    """Keep the samples of a dataset folder whose json satisfies every condition: a new folder.

    Samples are copied byte for byte (media, caption and json unchanged) into shards of the
    input shards' names; ``rejects.csv`` lists each removed sample with the first condition
    it failed (``filtered: motion > 0.5``) and ``filter_report.json`` says, per condition, how
    many samples failed it and how many it removed (those that passed every condition before
    it); the same table is printed. The grammar is in the module docstring.

    Args:
        source: the input dataset folder (or its shards).
        out: the output dataset folder.
        keep: an expression, e.g. ``"motion > 0.5 and ocr_area < 0.02 and not duplicate_of"``,
            or a list of them (all must hold).
        engine: ``local`` (a process pool) or ``ray`` (Ray Data).
        workers: processes (local; 0 = in this process) or Ray actors.
        ray_address: with ``engine=ray``: ``None`` (a local Ray), ``auto`` or ``ray://host:port``.
        overwrite: allow writing into a non-empty ``out``.

    Returns:
        Summary: ``out``, ``inputs``, ``kept``, ``removed``, ``unreadable``, ``conditions`` (a
        list of ``{"condition", "failed", "removed"}``).
    """
    expressions = [keep] if isinstance(keep, str) else list(keep)
    conditions = parse_conditions(expressions)  # refuse a bad expression before reading anything
    shards = resolve_shards(source)
    check_fields(conditions, dataset_fields(shards))  # a misspelt field fails before anything is written
    root = prepare_stage_output(out, shards, overwrite)
    tasks = [(shard, str(root), expressions) for shard in shards]
    results = make_engine(engine, workers, ray_address).map(_filter_shard, tasks, desc="filter shards")
    rows, rejects, failing, removed = _merge(tasks, results, len(conditions))
    write_manifest(rows, root / MANIFEST_NAME)
    write_rejects(rejects, root / REJECTS_NAME)
    unreadable = sum(1 for _, reason in rejects if reason.startswith("unreadable"))
    inputs = len(rows) + len(rejects)
    report = [{"condition": c.text, "failed": f, "removed": r} for c, f, r in zip(conditions, failing, removed)]
    summary = {"out": str(root), "inputs": inputs, "kept": len(rows), "removed": sum(removed),
               "unreadable": unreadable, "conditions": report}
    (root / "filter_report.json").write_text(json.dumps(summary, indent=2))
    _print_report(summary, source)
    return summary


def _merge(tasks: list[tuple], results: list, num_conditions: int) -> tuple[list, list, list[int], list[int]]:
    """(manifest rows, rejects, failed per condition, removed per condition) of all shards."""
    rows, rejects = [], []
    failing, removed = [0] * num_conditions, [0] * num_conditions
    for (shard, _, _), result in zip(tasks, results):
        if failed(result):
            raise RuntimeError(f"filtering {shard} failed: {result.error}")
        rows += result["rows"]
        rejects += result["rejects"]
        failing = [a + b for a, b in zip(failing, result["failing"])]
        removed = [a + b for a, b in zip(removed, result["removed"])]
    return rows, rejects, failing, removed


def _print_report(summary: dict, source) -> None:
    """The per-condition table, and a warning when nothing was kept."""
    report, inputs = summary["conditions"], summary["inputs"]
    width = max([len(line["condition"]) for line in report] + [9])
    print(f"kept {summary['kept']} of {inputs} samples in {summary['out']}/ ({summary['removed']} filtered out, "
          f"{summary['unreadable']} unreadable)")
    print(f"  {'condition':<{width}}  {'failed':>7}  {'removed':>7}")
    for line in report:
        print(f"  {line['condition']:<{width}}  {line['failed']:>7}  {line['removed']:>7}")
    if inputs and not summary["kept"]:
        worst = max(report, key=lambda line: line["removed"])
        print(f"warning: the filter kept none of the {inputs} samples; {worst['condition']!r} removed the most "
              f"({worst['removed']}): check its threshold against `lvdm data stats --source {source}`", file=sys.stderr)
