"""Build a model from a stored recipe without letting the recipe run code.

A checkpoint's ``hyper_parameters``, an exported file's metadata and the recipe Lightning merges
from ``--ckpt_path`` are a stranger's config: jsonargparse builds whatever classes they name,
imports whatever callables they spell, and (under ``**kwargs`` or ``Any``) instantiates class
specs no signature asked for. Every object lvdm builds from such config goes through
:func:`build_stored_module`, which first :func:`check_stored_recipe`:

1. every ``class_path`` anywhere in the recipe names an object under :data:`ALLOWED_IMPORTS`
   *and* defined there (``lvdm.curation.encode.wds.TarWriter`` is webdataset's class, reached
   through an lvdm module: refused);
2. a class spec may only stand where a typed parameter asks for an object: one in an untyped
   parameter (``**kwargs``, ``Any``, no annotation) is refused, whatever it names;
3. no string is a pipe or a URL (webdataset opens ``pipe:…`` and ``http://…`` through a shell);
4. the recipe is parsed with jsonargparse's import policy enforced (deny everything, allow only
   :data:`ALLOWED_IMPORTS`, checked on the name given *and* on where the object is defined), so
   a callable or class spelt as a plain string cannot reach anything else either.

Then the module is built under the same policy. Errors name the source and the key, in one line.
"""

from __future__ import annotations

import collections.abc
import enum
import importlib
import inspect
import pathlib
import re
import threading
import typing
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from lvdm.checkpoints.moved import current_path, update_class_paths

#: The packages a stored recipe may name (classes, functions returning objects, callables).
ALLOWED_IMPORTS = ("lvdm", "torch.nn", "torch.optim", "lightning.pytorch")
#: The only instantiator a stored recipe may name: Lightning CLI's.
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
#: Keys of a jsonargparse class spec that hold constructor arguments.
_ARG_SECTIONS = ("init_args", "dict_kwargs")
#: Annotations that never make jsonargparse build or import an object: data, and the generic
#: containers (``dict``, ``Sequence``…) whose arguments are looked at one by one.
_DATA = (str, int, float, bool, bytes, complex, type(None), pathlib.PurePath, enum.Enum)
_GENERIC_HOMES = ("builtins", "collections.abc", "typing")
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
_SHELL_URL = re.compile(r"^\s*(pipe:|[A-Za-z][A-Za-z0-9+.-]*://)")
_POLICY_LOCK = threading.RLock()


class UnsafeCheckpointError(ValueError):
    """A checkpoint asks for something lvdm will not do with a stranger's file."""


def _allowed_name(path: str) -> bool:
    return any(path == p or path.startswith(p + ".") for p in ALLOWED_IMPORTS)


def resolve_allowed(path: str, where: str) -> Any:
    """The class or function ``path`` names, if it lies under :data:`ALLOWED_IMPORTS` and is
    defined there; :class:`UnsafeCheckpointError` otherwise. Nothing outside the allowed
    packages is imported, not even to look."""
    if not isinstance(path, str) or not _IMPORT_PATH.fullmatch(path) or not _allowed_name(path):
        raise UnsafeCheckpointError(f"{where} names {path!r}, outside the packages lvdm builds from a stored recipe {ALLOWED_IMPORTS}")
    parts = path.split(".")
    obj, found = None, 0
    for n in range(len(parts), 0, -1):  # the longest importable module, then attributes
        module = ".".join(parts[:n])
        if not _allowed_name(module):
            break
        try:
            obj, found = importlib.import_module(module), n
            break
        except ImportError:
            continue
    try:
        for attr in parts[found:]:
            obj = getattr(obj, attr)
    except AttributeError:
        obj = None
    if obj is None or found == 0:
        raise ValueError(f"{where} names {path!r}, which does not exist")
    home = getattr(obj, "__module__", None)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not isinstance(home, str) or not _allowed_name(home):
        raise UnsafeCheckpointError(
            f"{where} names {path!r}, which is {home or type(obj).__name__}'s {getattr(obj, '__name__', obj)!r}, "
            f"not a class or function of {ALLOWED_IMPORTS}"
        )
    return obj


def _flatten(annotation: Any) -> Iterator[Any]:
    yield annotation
    for arg in typing.get_args(annotation):
        if not isinstance(arg, (list, tuple)):  # Callable's argument list
            yield from _flatten(arg)
        else:
            for item in arg:
                yield from _flatten(item)


def takes_objects(annotation: Any) -> bool:
    """True when jsonargparse may build an object for a parameter of this type (a class other
    than plain data, a ``Callable``, a ``type``); False for no annotation, ``Any`` and data."""
    for t in _flatten(annotation):
        if t is inspect.Parameter.empty or t is typing.Any:
            continue
        origin = typing.get_origin(t) or t
        if origin in (collections.abc.Callable, type) or (isinstance(t, str) and t not in ("Any", "object")):
            return True  # (an unresolved forward reference counts as a class)
        if inspect.isclass(origin) and not issubclass(origin, _DATA) and origin.__module__ not in _GENERIC_HOMES:
            return True
    return False


def _annotations(target: Any) -> tuple[dict[str, Any], bool]:
    """``(name → annotation, accepts **kwargs)`` of what a class spec's arguments go to; for a
    class whose ``__init__`` takes ``**kwargs``, the parameters of its bases count too (jsonargparse
    follows ``super().__init__(**kwargs)``). A missing annotation is ``inspect.Parameter.empty``."""
    found: dict[str, Any] = {}
    chain = [c.__init__ for c in inspect.getmro(target) if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    var_kw = False
    for fn in chain:
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            break
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # an unresolvable forward reference: keep the written annotation
            hints = {}
        var_kw = False
        for name, p in params.items():
            if p.kind is p.VAR_KEYWORD:
                var_kw = True
            elif p.kind is not p.VAR_POSITIONAL and name != "self":
                found.setdefault(name, hints.get(name, p.annotation))
        if not var_kw:
            break
    return found, var_kw


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value


def _walk(value: Any, key: str, typed: bool, source: str) -> None:
    if isinstance(value, str):
        if _SHELL_URL.match(value):
            raise UnsafeCheckpointError(f"refusing {source}: {key} is {value[:60]!r}; a stored recipe may not name a pipe or a URL")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _walk(item, f"{key}[{i}]", typed, source)
    elif _is_spec(value):
        if not typed:
            raise UnsafeCheckpointError(
                f"refusing {source}: {key} is an untyped parameter but holds a class spec ({value['class_path']!r}); "
                "lvdm builds objects from a stored recipe only where a typed parameter asks for one"
            )
        target = resolve_allowed(value["class_path"], f"{source}: {key}")
        params, var_kw = _annotations(target)
        for section in _ARG_SECTIONS:
            args = value.get(section) or {}
            if not isinstance(args, dict):
                raise ValueError(f"{source}: {key}.{section} is not a mapping")
            for name, item in args.items():
                known = name in params
                _walk(item, f"{key}.{name}", known and takes_objects(params[name]), source)
                if not known and not var_kw:
                    raise ValueError(f"{source}: {key} ({value['class_path']}) has no parameter {name!r}")
        for name, item in value.items():
            if name not in (*_ARG_SECTIONS, "class_path", "__path__"):
                _walk(item, f"{key}.{name}", False, source)
    elif isinstance(value, dict):
        for name, item in value.items():
            _walk(item, f"{key}.{name}", typed, source)


def current_recipe(hparams: dict[str, Any]) -> dict[str, Any]:
    """A stored recipe with every class path that moved since it was written brought up to date
    (the module's ``_class_path`` and each nested ``class_path``; :mod:`lvdm.checkpoints.moved`)."""
    hparams, _ = update_class_paths(dict(hparams))
    if isinstance(hparams.get("_class_path"), str):
        hparams["_class_path"] = current_path(hparams["_class_path"])
    return hparams


def _as_spec(hparams: dict[str, Any], source: str) -> dict[str, Any]:
    """The module's class spec from Lightning's stored form (``_class_path`` + arguments)."""
    hparams = dict(hparams)
    instantiator = hparams.pop("_instantiator", None)
    if instantiator is None:
        raise ValueError(
            f"{source} carries no recipe (it was not trained with `lvdm fit`); "
            "build the module in Python and load its state_dict instead"
        )
    if instantiator != INSTANTIATOR:
        raise UnsafeCheckpointError(f"{source} names the instantiator {instantiator!r}; lvdm only uses {INSTANTIATOR!r}")
    if "_class_path" not in hparams:
        raise ValueError(f"{source}: its recipe names no module class ('_class_path')")
    return {"class_path": hparams.pop("_class_path"), "init_args": hparams}


@contextmanager
def import_policy() -> Iterator[None]:
    """While inside, jsonargparse imports from a parsed value only what lies under (and is defined
    in) :data:`ALLOWED_IMPORTS`, and never instantiates a class spec in an ``Any`` parameter. The
    settings are process-wide in jsonargparse: they are restored on exit, under a lock."""
    from jsonargparse import _common, set_parsing_settings

    keys = ("import_path_verdicts", "import_paths_enforced", "instantiate_subclass_spec_in_any")
    with _POLICY_LOCK:
        saved = {k: _common.parsing_settings[k] for k in keys}
        try:
            set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=list(ALLOWED_IMPORTS),
                                 instantiate_subclass_spec_in_any=False)
            yield
        finally:
            _common.parsing_settings.update(saved)


def _policy_error(err: BaseException, source: str) -> Exception:
    text = str(err)
    denied = re.search(r"Importing '([^']+)' is not allowed", text)
    if denied:
        return UnsafeCheckpointError(f"refusing {source}: its recipe names {denied.group(1)!r}, outside {ALLOWED_IMPORTS}")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = next((line[2:] for line in lines if line.startswith("- ") and "NoneType" not in line), lines[0] if lines else text)
    return ValueError(f"{source}: its recipe does not fit lvdm's classes: {detail}")


def check_stored_recipe(hparams: dict[str, Any], source: str) -> type:
    """Refuse a stored recipe (Lightning ``hyper_parameters``) that could make lvdm run code,
    without building anything; return the LightningModule class it names.

    Raises:
        UnsafeCheckpointError: naming ``source`` and the offending key.
    """
    import lightning as L
    from jsonargparse import ArgumentParser

    spec = _as_spec(current_recipe(hparams), source)
    cls = resolve_allowed(spec["class_path"], f"{source}: _class_path")
    if not (inspect.isclass(cls) and issubclass(cls, L.LightningModule)):
        raise UnsafeCheckpointError(f"{source}: {spec['class_path']!r} is not a LightningModule")
    _walk(spec, "model", True, source)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "module", fail_untyped=False)
    with import_policy():
        try:
            parser.parse_object({"module": {"class_path": spec["class_path"], "dict_kwargs": spec["init_args"]}})
        except Exception as err:
            raise _policy_error(err, source) from None
    return cls


def build_stored_module(hparams: dict[str, Any], source: str = "checkpoint") -> torch.nn.Module:
    """Rebuild the LightningModule a stored recipe describes (``hyper_parameters`` of a checkpoint
    written by ``lvdm fit``, or an exported file's metadata), after :func:`check_stored_recipe`;
    jsonargparse's import policy stays enforced while it builds."""
    from lightning.pytorch.cli import instantiate_module

    hparams = current_recipe(hparams)
    cls = check_stored_recipe(hparams, source)
    args = {k: v for k, v in hparams.items() if k != "_instantiator"}
    with import_policy():
        try:
            return instantiate_module(cls, args)
        except UnsafeCheckpointError:
            raise
        except Exception as err:
            if "is not allowed, denied by" in str(err):
                raise _policy_error(err, source) from None
            raise


__all__ = ["ALLOWED_IMPORTS", "INSTANTIATOR", "UnsafeCheckpointError", "build_stored_module", "check_stored_recipe",
           "current_recipe", "import_policy", "resolve_allowed", "takes_objects"]
