"""Where moved classes live now: the one alias table for ``class_path``s in stored recipes.

Users' recipes and the hyperparameters inside their checkpoints name classes by import path
(``lvdm.module.LatentDiffusionModule``). When a module moves, those files must keep loading:
:func:`current_path` maps an old path to today's, and both the stored-recipe builder
(:mod:`lvdm.checkpoints.stored_recipe`) and ``lvdm fit/validate/test --config``
(:mod:`lvdm.lightning_cli`) apply it before anything is imported. Python code that imports an
old module path gets Python's own ``ModuleNotFoundError``: the table is for files, not imports.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MOVED", "current_path", "update_class_paths"]

# old import path (a module, or one name in a module that was split) → where it lives now.
# The longest matching prefix wins, so a name entry overrides its module's entry.
MOVED: dict[str, str] = {
    # 2026-12: one home per concept (checkpoints/, training/, shapes/, data preparation in curation/)
    "lvdm.checkpoint": "lvdm.checkpoints.load",
    "lvdm.stored_recipe": "lvdm.checkpoints.stored_recipe",
    "lvdm.init_from": "lvdm.checkpoints.init_from",
    "lvdm.distributed.checkpoint": "lvdm.checkpoints.export",
    "lvdm.callbacks.checkpoint": "lvdm.checkpoints.atomic",
    "lvdm.callbacks.checkpoint.RunCheckpoint": "lvdm.training.callbacks.run_checkpoint.RunCheckpoint",
    "lvdm.module": "lvdm.training.module",
    "lvdm.autoencoder_module": "lvdm.training.autoencoder_module",
    "lvdm.callbacks": "lvdm.training.callbacks",
    "lvdm.callbacks.init_from": "lvdm.training.callbacks.warm_start",
    "lvdm.callbacks.guard": "lvdm.training.callbacks.nonfinite",
    "lvdm.callbacks.data": "lvdm.training.callbacks.data_health",
    "lvdm.distributed.callbacks": "lvdm.training.callbacks.parallel",
    "lvdm.distributed.SequenceParallel": "lvdm.training.callbacks.parallel.SequenceParallel",
    "lvdm.distributed.ActivationCheckpointing": "lvdm.training.callbacks.parallel.ActivationCheckpointing",
    "lvdm.perf.compile": "lvdm.distributed.compile",
    "lvdm.perf.compile.CompileBlocks": "lvdm.training.callbacks.parallel.CompileBlocks",
    "lvdm.distributed.checkpointing": "lvdm.distributed.activation_checkpointing",
    "lvdm.distributed.testing": "lvdm.distributed.cpu_deepspeed",
    "lvdm.distributed.testing.StepCounter": "lvdm.training.callbacks.steps.StepCounter",
    "lvdm.perf.flops": "lvdm.perf.step_flops",
    "lvdm.data.synthetic": "lvdm.shapes.synthetic",
    "lvdm.data.mixed": "lvdm.shapes.mixed",
    "lvdm.metrics.probe": "lvdm.shapes.probe",
    "lvdm.data.probe": "lvdm.data.media_probe",
    "lvdm.data.guard": "lvdm.data.stream_guard",
    "lvdm.data.testing": "lvdm.data.sample_media",
    "lvdm.data.cache": "lvdm.text.identity",
    "lvdm.data.latents": "lvdm.curation.encode",
    "lvdm.data.latents.check_latent_compressor": "lvdm.data.shards.check_latent_compressor",
    "lvdm.data.transcode": "lvdm.curation.transcode",
}


def current_path(path: str) -> str:
    """``path`` (``a.b.C`` or ``a.b:C``) with its longest moved prefix replaced; unchanged when
    nothing of it moved."""
    module, colon, attr = path.partition(":")
    dotted = f"{module}.{attr}" if colon else module
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        new = MOVED.get(".".join(parts[:n]))
        if new is not None:
            if colon:  # keep the module:attribute form when only the module moved
                n_module = len(module.split("."))
                if n <= n_module:
                    return ".".join([new, *parts[n:n_module]]) + ":" + attr
            return ".".join([new, *parts[n:]])
    return path


def update_class_paths(config: Any) -> tuple[Any, list[tuple[str, str]]]:
    """A copy of a recipe (nested dicts and lists) with every ``class_path`` brought up to date,
    and the ``(old, new)`` pairs it changed."""
    changed: list[tuple[str, str]] = []

    def visit(node):
        if isinstance(node, dict):
            out = {k: visit(v) for k, v in node.items()}
            old = out.get("class_path")
            if isinstance(old, str) and (new := current_path(old)) != old:
                out["class_path"] = new
                changed.append((old, new))
            return out
        if isinstance(node, list):
            return [visit(v) for v in node]
        return node

    return visit(config), changed

