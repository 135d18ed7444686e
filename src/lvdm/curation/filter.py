"""``lvdm data filter``: keep the samples whose json fields satisfy expressions.

An expression is parsed with :mod:`ast` and only these forms are accepted: field names,
constants (numbers, strings, ``True``/``False``/``None``), tuples/lists of constants (for
``in``), comparisons (``< <= > >= == != in not in``), ``and``/``or``/``not``, and arithmetic
(``+ - * / // %``, unary ``-``). Anything else — calls, attributes, subscripts, lambdas,
``**`` — is refused before any sample is read, so an expression can never run code.

A name is the sample json's top-level field; a field the sample lacks is ``None``. A
comparison with ``None`` on either side (other than ``==``/``!=``) is false, arithmetic with
``None`` gives ``None``, and ``not None`` is true: ``motion > 0.5`` drops samples that were
never scored, ``not duplicate_of`` keeps those that duplicate nothing.
"""

from __future__ import annotations

import ast
import json
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

from lvdm.curation.engine import failed, make_engine
from lvdm.curation.split import prepare_stage_output
from lvdm.data.schema import MANIFEST_NAME, REJECTS_NAME, manifest_row, media_entry, write_manifest, write_rejects
from lvdm.data.shards import ShardWriter, read_shard, resolve_shards

__all__ = ["Condition", "parse_conditions", "filter_dataset"]

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
        super().generic_visit(node)


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
        if value is None:
            return None
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, fields), _evaluate(node.right, fields)
        if left is None or right is None:
            return None
        try:
            return _ARITHMETIC[type(node.op)](left, right)
        except (ZeroDivisionError, TypeError):
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
    root = prepare_stage_output(out, shards, overwrite)
    tasks = [(shard, str(root), expressions) for shard in shards]
    results = make_engine(engine, workers, ray_address).map(_filter_shard, tasks, desc="filter shards")
    rows, rejects = [], []
    failing, removed = [0] * len(conditions), [0] * len(conditions)
    for (shard, _, _), result in zip(tasks, results):
        if failed(result):
            raise RuntimeError(f"filtering {shard} failed: {result.error}")
        rows += result["rows"]
        rejects += result["rejects"]
        failing = [a + b for a, b in zip(failing, result["failing"])]
        removed = [a + b for a, b in zip(removed, result["removed"])]
    write_manifest(rows, root / MANIFEST_NAME)
    write_rejects(rejects, root / REJECTS_NAME)
    unreadable = sum(1 for _, reason in rejects if reason.startswith("unreadable"))
    inputs = len(rows) + len(rejects)
    report = [{"condition": c.text, "failed": f, "removed": r} for c, f, r in zip(conditions, failing, removed)]
    summary = {"out": str(root), "inputs": inputs, "kept": len(rows), "removed": sum(removed),
               "unreadable": unreadable, "conditions": report}
    (root / "filter_report.json").write_text(json.dumps(summary, indent=2))
    width = max([len(c.text) for c in conditions] + [9])
    print(f"kept {len(rows)} of {inputs} samples in {root}/ ({sum(removed)} filtered out, {unreadable} unreadable)")
    print(f"  {'condition':<{width}}  {'failed':>7}  {'removed':>7}")
    for line in report:
        print(f"  {line['condition']:<{width}}  {line['failed']:>7}  {line['removed']:>7}")
    return summary
