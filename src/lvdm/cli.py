"""The ``lvdm`` command.

``lvdm fit|validate|test`` are Lightning's CLI over YAML recipes; the other commands
(:data:`COMMANDS`, :data:`GROUPS`) call library functions, whose arguments come from their
typed signatures and docstrings (one way to turn config into objects: jsonargparse). The CLI
only parses: nothing in the library imports it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:  # jsonargparse costs 0.2 s to import: only commands that parse pay for it
    from jsonargparse import ArgumentParser

LIGHTNING_COMMANDS = ("fit", "validate", "test")

OVERVIEW = """\
usage: lvdm <command> [options]

lvdm trains and samples latent video diffusion transformers (Open-Sora family).

Training (Lightning CLI; compose YAML recipes with --config, override any key on the line):
  fit         train a model          lvdm fit --config recipes/tiny/cross_attn.yaml
  validate    run the validation loop on a checkpoint
  test        run the test loop on a checkpoint   lvdm test --config <recipe> --ckpt_path last.ckpt

lvdm commands:
  sample      prompts -> mp4 files   lvdm sample --checkpoint last.ckpt --prompts '["a red square moving left"]'
              image-to-video: --image first.png; continuation: --video start.mp4 --extend 16
  data synth  write the synthetic moving-shapes dataset as WebDataset shards
  data synth-mixed  the shapes dataset in mixed sizes and lengths, with images (bucketed training)
  data encode precompute a compressor's latents of video shards into latent shards
  data ingest your videos/images (folder, CSV/parquet table, video2dataset shards) -> shards + manifest + rejects
  data split  cut videos into scene clips (PySceneDetect), min/max length or fixed chunks
  data score  add scores (motion, ocr, duplicates, rules, aesthetic, clip_match) to a dataset folder
  data caption  captions from a vision-language model (transformers or an OpenAI-compatible server)
  data filter keep samples by json-field expressions   lvdm data filter --source ds --out kept --keep 'motion > 0.5'
  data stats  counts, percentiles and histogram PNGs of a dataset folder's fields
  eval probe  score generated shapes videos: colour / shape / direction accuracy
  eval fvd    Fréchet Video Distance (original TF protocol)   lvdm eval fvd --real <shards|mp4s> --fake <mp4s>
  eval clipscore  CLIPScore of videos against their prompts  lvdm eval clipscore --videos <mp4s> --clip <path|hub id>
  eval vae    reconstruction PSNR / SSIM / rFVD of a compressor   lvdm eval vae --videos <shards> --checkpoint ae.ckpt
  eval vbench VBench-style dimensions, offline   lvdm eval vbench --videos <mp4s> --dimensions '[temporal_flickering]' --out report.json
  cache calibrate  a checkpoint's step-cache thresholds   lvdm cache calibrate --checkpoint last.ckpt --prompt_file p.txt
  app         a web page over a checkpoint: prompts -> videos   lvdm app --checkpoint last.ckpt
  estimate    parameters, FLOPs, GPU-hours, s/video, memory/GPU   lvdm estimate --size XL/2 --frames 16
  checkpoint export  a .ckpt or DeepSpeed checkpoint -> one .safetensors   lvdm checkpoint export --checkpoint last.ckpt --out model.safetensors --ema true
  lora merge  a LoRA run's adapter folded into its base -> one .safetensors   lvdm lora merge --adapter last.ckpt --out merged.safetensors
  lora export a LoRA run's adapter as a diffusers / original-model (ComfyUI) LoRA file   lvdm lora export --checkpoint last.ckpt --out lora.safetensors --format original

Run `lvdm <command> --help` for the options of a command.
"""


class CommandLineError(SystemExit):
    """An option or config value the parser refused, as one line (plus a hint line): raised in
    place of jsonargparse's exit, which prints the whole usage and a nested dump of the config
    (60 lines for a misspelt key). A ``SystemExit``, so nothing in between catches it either."""


def _one_line_errors(base: type) -> type:
    """``base`` (a jsonargparse parser class) whose top-level parse errors raise :class:`CommandLineError`."""

    class Parser(base):
        def error(self, message: str, ex: Exception | None = None):
            if not self.exit_on_error:  # jsonargparse's inner parsers expect an ArgumentError to catch
                return super().error(message, ex)
            raise CommandLineError(parse_error_message(message, getattr(ex, "subcommand_parser", None) or self))

    Parser.__name__ = Parser.__qualname__ = base.__name__
    return Parser


def _option_names(source) -> list[str]:
    """Option keys of a parser, or of a class's constructor (``"module.Class"``)."""
    if isinstance(source, str):
        from jsonargparse import ArgumentParser

        try:
            parser = ArgumentParser(exit_on_error=False)
            parser.add_class_arguments(_resolve(":".join(source.rsplit(".", 1))))
        except Exception:  # the suggestion is a courtesy: no suggestion rather than a second error
            return []
        source = parser
    return [a.dest for a in source._actions if a.dest != "help" and not a.dest.endswith(".help")]


def _suggest(name: str, choices: list[str]) -> str:
    import difflib

    leaf = {c.rsplit(".", 1)[-1]: c for c in choices}
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6) or \
        [leaf[m] for m in difflib.get_close_matches(name.rsplit(".", 1)[-1], list(leaf), n=1, cutoff=0.6)]
    return f"did you mean '{close[0]}'? " if close else ""


def _nested_error(lines: list[str]) -> tuple[list[str], str | None, str]:
    """``(config path, innermost class_path, deepest error line)`` of jsonargparse's nested
    'Does not validate against any of the Union subtypes' report."""
    stack: list[tuple[int, str, str | None]] = []  # (indent, key, class_path)
    for line in lines:
        indent, text = len(line) - len(line.lstrip()), line.strip().removeprefix("- ")
        while stack and stack[-1][0] >= indent:  # left the branch of the key on top
            stack.pop()
        if text.startswith('Parser key "'):
            key, _, rest = text[len('Parser key "'):].partition('"')
            stack.append((indent, key, None))
            text = rest.lstrip(":").strip()
        if text.startswith("Problem with given class_path '") and stack:
            stack[-1] = (stack[-1][0], stack[-1][1], text.split("'")[1])
            continue
        if text and not text.startswith(("Does not validate", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>")):
            classes = [c for _, _, c in stack if c]
            return [k for _, k, _ in stack], classes[-1] if classes else None, text
    return [k for _, k, _ in stack], None, lines[0].strip()


def parse_error_message(message: str, parser) -> str:
    """One line (plus a hint) for a jsonargparse parse error: an unknown key names the closest
    valid one (difflib), a wrong value names the key, the type and the value."""
    import re

    help_hint = f"run `{parser.prog.replace(' [options]', '')} --help` for the options"
    found = re.match(r"(?:Subcommand|Group) '[^']+' does not accept option '([^']+)'|Option '([^']+)' is not accepted before", message)
    if found:  # an unknown key in a config file, outside any class
        key = found.group(1) or found.group(2)
        return f"unknown key '{key}'\n{_suggest(key, _option_names(parser))}({help_hint})"
    found = re.match(r"unrecognized arguments: (\S+)", message)
    if found:
        option = found.group(1)
        return f"unrecognized argument {option}\n{_suggest(option.lstrip('-'), _option_names(parser))}({help_hint})"
    path, class_path, error = _nested_error(message.strip().splitlines())
    where = ".".join(path)
    found = re.match(r"Option '([^']+)' is not accepted", error) or re.match(r"Key '([^']+)' is not expected", error)
    if found:
        key, owner = found.group(1), class_path or "this class"
        names = _option_names(class_path) if class_path else []
        return f"unknown key '{key}' in {where} ({owner})\n{_suggest(key, names)}({help_hint})"
    found = re.match(r"Expected a (?:<class '([^']+)'>|(.+?))(?:\. Got value: (.*))?$", error)
    if found:
        given = found.group(3) or next(iter(re.findall(r"Given value: (.*)", message)), "?")
        return f"{where}: expected {found.group(1) or found.group(2)}, got {given!r}\n({help_hint})"
    return f"{where + ': ' if where else ''}{error}\n({help_hint})"


def _function_parser(fn: Callable, prog: str) -> "ArgumentParser":
    from jsonargparse import ArgumentParser

    parser = _one_line_errors(ArgumentParser)(prog=prog, description=(fn.__doc__ or "").split("\n\n")[0],
                                               exit_on_error=True)
    parser.add_argument("--config", action="config", help="a YAML file with these options")
    parser.add_function_arguments(fn, as_group=False)
    return parser


def _run_function(fn: Callable, prog: str, argv: list[str]):
    parser = _function_parser(fn, prog)
    cfg = parser.instantiate_classes(parser.parse_args(argv))
    kwargs = {k: v for k, v in vars(cfg).items() if k != "config"}
    return fn(**kwargs)


# Every lvdm command: name → "module:function". Modules are imported only when their command
# runs (or its --help is asked for), so `lvdm --help` and `lvdm <group> --help` stay fast.
COMMANDS: dict[str, str] = {
    "sample": "lvdm.generation.sample:sample",
    "estimate": "lvdm.perf.estimate:estimate",
    "app": "lvdm.generation.app:app",
}
GROUPS: dict[str, dict[str, str]] = {
    "data": {
        "synth": "lvdm.shapes.synthetic:write_synthetic_dataset",
        "synth-mixed": "lvdm.shapes.mixed:write_mixed_shapes",
        "encode": "lvdm.curation.encode:encode_shards",
        "ingest": "lvdm.curation.ingest:ingest",
        "split": "lvdm.curation.split:split",
        "score": "lvdm.curation.score:score_dataset",
        "caption": "lvdm.curation.caption:caption_dataset",
        "filter": "lvdm.curation.filter:filter_dataset",
        "stats": "lvdm.curation.stats:dataset_stats",
    },
    "eval": {
        "probe": "lvdm.shapes.probe:probe_folder",
        "fvd": "lvdm.metrics.evaluate:fvd",
        "clipscore": "lvdm.metrics.evaluate:clipscore",
        "vae": "lvdm.metrics.vae_eval:evaluate_vae",
        "vbench": "lvdm.metrics.vbench:vbench",
    },
    "checkpoint": {
        "export": "lvdm.checkpoints.export:export_checkpoint",
    },
    "cache": {
        "calibrate": "lvdm.generation.calibrate:calibrate_step_cache",
    },
    "lora": {
        "merge": "lvdm.finetune.adapter_files:merge",
        "export": "lvdm.finetune.adapter_files:export",
    },
}


def _resolve(target: str) -> Callable:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


# Lightning warnings that are expected with lvdm's design and only confuse users:
QUIET_WARNINGS = (
    r".*IterableDataset. has .__len__. defined",  # VideoDataModule's length is exact per rank
    r".*module\(s\) in eval mode at the start of training",  # frozen compressors stay in eval
    r".*isinstance\(treespec, LeafSpec\)",  # torch/Lightning version skew, harmless
    r"LightningCLI's args parameter is intended",  # `lvdm` hands LightningCLI the argv it was given
)


def lightning_cli(args: Optional[list[str]] = None, run: bool = True):
    """The Lightning CLI over lvdm's module and data modules (recipes name the classes)."""
    import warnings

    import lightning as L
    from jsonargparse import set_parsing_settings

    from lightning.pytorch.cli import LightningArgumentParser

    from lvdm.lightning_cli import LvdmCLI, quiet_lightning_tips, read_moved_class_paths

    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    quiet_lightning_tips()
    # a recipe's absolute `${trainer.max_steps}` is read relative to where it stands, so it still
    # resolves under the subcommand (`fit.trainer.max_steps`) and inside `callbacks+` fragments
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    read_moved_class_paths("omegaconf+")
    return LvdmCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_class=_one_line_errors(LightningArgumentParser),
        # omegaconf+: recipes may interpolate (`total_steps: ${trainer.max_steps}`), resolved
        # after every --config and command-line value is merged
        parser_kwargs={"prog": "lvdm", "description": "Train and evaluate lvdm models from YAML recipes.",
                       "parser_mode": "omegaconf+"},
    )


# Errors that describe bad input (a config value, a file, the data): the CLI prints their message
# alone, not the traceback (set LVDM_TRACEBACK=1 to see it). Anything else keeps its traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ImportError)


def _user_error_names() -> tuple[type, ...]:
    from lvdm.training.callbacks.nonfinite import NonFiniteTrainingError
    from lvdm.data.stream_guard import DataLoaderStopped, DataStreamError

    return (*USER_ERRORS, NonFiniteTrainingError, DataStreamError, DataLoaderStopped)


def error_message(err: BaseException) -> str:
    """The message of a user-facing error, with jsonargparse's union wrapper taken off (a failing
    constructor inside ``class_path`` config is reported as 'Does not validate against any of the
    Union subtypes' followed by the real error and a dump of the whole config)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if "Does not validate against any of the Union subtypes" in text and "Errors:" in text:
        errors = text.split("Errors:", 1)[1].split("Given value", 1)[0]
        lines = [line.strip()[2:].strip() for line in errors.splitlines() if line.strip().startswith("- ")]
        real = [line for line in lines if not line.startswith("Expected a <class 'NoneType'>")]
        text = "\n  ".join(real or lines)
    return f"{type(err).__name__}: {text}"


def main(argv: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("-h", "--help", "help"):
        from lvdm.utils import apply_thread_policy

        apply_thread_policy()  # before torch starts: its OpenMP reads the wait policy once (fit says which)
    if os.environ.get("LVDM_TRACEBACK") or not argv or argv[0] in ("-h", "--help", "help"):
        return _dispatch(argv)
    try:
        return _dispatch(argv)
    except CommandLineError as err:
        sys.stderr.write(f"lvdm {' '.join(a for a in argv[:2] if not a.startswith('-'))}: {err.code}\n")
        sys.exit(2)
    except Exception as err:
        if not isinstance(err, _user_error_names()):
            raise
        sys.exit(f"lvdm {' '.join(a for a in argv[:2] if not a.startswith('-'))}: {error_message(err)}\n"
                 "(set LVDM_TRACEBACK=1 for the traceback)")


def _dispatch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(OVERVIEW)
        return
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        lightning_cli(argv)
        return
    if command in COMMANDS:
        _run_function(_resolve(COMMANDS[command]), f"lvdm {command}", rest)
        return
    if command in GROUPS:
        sub = GROUPS[command]
        if not rest or rest[0] in ("-h", "--help") or rest[0] not in sub:
            names = ", ".join(sub)
            print(f"usage: lvdm {command} {{{names}}} [options]\n\nRun `lvdm {command} <name> --help`.")
            if rest and rest[0] not in ("-h", "--help"):
                sys.exit(f"lvdm {command}: unknown command {rest[0]!r}; choose from {names}")
            return
        _run_function(_resolve(sub[rest[0]]), f"lvdm {command} {rest[0]}", rest[1:])
        return
    sys.exit(f"lvdm: unknown command {command!r}; run `lvdm --help`")


if __name__ == "__main__":
    main()
