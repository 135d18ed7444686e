"""The house's layers, read from the source: no import circle, lower layers never import upper ones."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PURE = ("lvdm.models", "lvdm.ops", "lvdm.diffusion", "lvdm.compressors", "lvdm.text", "lvdm.autoencoders")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """lvdm modules ``path`` imports (every import, or only those run when it is imported)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lvdm")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lvdm"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from lvdm.x import y` may be a module
    return found


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    return {name: {m for m in _imports(path, top_level_only) if m in MODULES and m != name}
            for name, path in MODULES.items()}


def _find_cycle(graph: dict[str, set[str]]):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle_between_modules():
    """Imports that run when a module is imported form no circle (a package's ``__init__``
    importing its own submodules is not a circle: they are listed by module, not package)."""
    graph = _graph(top_level_only=True)
    for name in graph:  # a package's own __init__ → submodule edges are how packages work
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    assert _find_cycle(graph) is None, " → ".join(_find_cycle(graph))


@pytest.mark.parametrize("lower,upper", [
    ("lvdm.data", "lvdm.training.callbacks"),
    ("lvdm.data", "lvdm.cli"),
    *((pure, "lightning") for pure in PURE),
])
def test_lower_layers_do_not_import_upper_ones(lower, upper):
    offenders = []
    for name, path in MODULES.items():
        if name == lower or name.startswith(lower + "."):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                offenders += [f"{name} imports {n}" for n in names if n == upper or n.startswith(upper + ".")]
    assert not offenders


def test_the_library_never_imports_the_cli():
    offenders = [name for name, path in MODULES.items() if name != "lvdm.cli" and "lvdm.cli" in _imports(path, False)]
    assert not offenders


def test_the_checks_can_fail():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    assert "lvdm.distributed.ranks" in _imports(SRC / "lvdm/data/datamodule.py", top_level_only=True)


# Names that say only what kind of file it is, qualified by their package (text/clip is the CLIP
# text encoder, curation/scorers/clip its scorers); every other module name is one concept's home.
GENERIC_NAMES = {"__init__", "base", "layers", "clip"}


def test_one_module_name_one_concept():
    seen: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        if path.stem not in GENERIC_NAMES:
            seen.setdefault(path.stem, []).append(name)
    assert not {stem: homes for stem, homes in seen.items() if len(homes) > 1}


def _lvdm_classes():
    import importlib
    import inspect

    for name in sorted(MODULES):
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and obj.__module__ == name:
                yield name, obj


def test_lightning_modules_and_callbacks_live_in_training():
    """Every LightningModule in ``lvdm.training``, every callback in ``lvdm.training.callbacks``,
    and the concepts the map names in their one package."""
    import lightning as L

    misplaced = []
    for name, cls in _lvdm_classes():
        if issubclass(cls, L.Callback) and not name.startswith("lvdm.training.callbacks."):
            misplaced.append(f"callback {cls.__name__} in {name}")
        if issubclass(cls, L.LightningModule) and not name.startswith("lvdm.training."):
            misplaced.append(f"LightningModule {cls.__name__} in {name}")
    assert not misplaced
    homes = {"load_module": "lvdm.checkpoints.load", "export_checkpoint": "lvdm.checkpoints.export",
             "init_from": "lvdm.checkpoints.init_from", "AtomicCheckpointIO": "lvdm.checkpoints.atomic",
             "write_synthetic_dataset": "lvdm.shapes.synthetic", "probe_folder": "lvdm.shapes.probe",
             "encode_shards": "lvdm.curation.encode", "parallelize": "lvdm.distributed.parallelize"}
    defined = {}
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in homes:
                defined.setdefault(node.name, []).append(name)
    assert defined == {k: [v] for k, v in homes.items()}
