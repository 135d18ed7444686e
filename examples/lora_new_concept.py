"""Teach the trained demo model a colour it has never seen, with LoRA, on CPU; check it keeps the old ones.

The demo model (``make demo`` / ``examples/demo.py``) learned the default shapes world: red,
green, blue and yellow objects. Magenta (``lvdm.shapes.synthetic.EXTRA_COLOURS``) is the new
concept. This script runs the commands a user would type, printing each one:

1. ``lvdm data synth --colours [magenta]`` — clips of magenta objects, four magenta
   combinations held out for evaluation; and ``lvdm data synth`` of the default world for replay
   (old-concept clips mixed into training so the adapter does not overwrite the old colours);
2. ``lvdm data encode`` — both into latent shards, as the demo does;
3. ``lvdm fit`` — the demo's video recipe with ``InitFrom`` (the trained model as the frozen base)
   and the ``LoRA`` callback: rank-8 adapters on the blocks' attention and MLP linears and on the
   caption projection (``context_proj``); every other weight, the text encoder included, frozen;
4. ``lvdm sample`` + ``lvdm eval probe --colours [red, green, blue, yellow, magenta]`` — before
   and after, on the held-out magenta prompts (combinations the adapter never saw) and on the
   demo's 64 held-out old prompts, read with the five-colour palette (an old colour drifting
   towards magenta counts as wrong).

Why the text encoder can stay frozen: the demo's :class:`lvdm.text.words.WordTextEncoder` hashes
each word into one of 4096 embedding rows, initialised N(0, 1) and trained only where a training
caption's word lands. ``magenta`` lands in a row no default caption word uses (checked below), so
its embedding is a fixed random vector, distinct from every trained word: the caption does name the
new colour, the base model just has no use for it yet. The adapter on ``context_proj`` (the
caption projection whose pooled output drives the adaLN modulation) learns what that vector means.
A word sharing a trained word's row could not be told apart from it without training the text side.

Usage: ``python examples/lora_new_concept.py [--base demo_out/run_video/checkpoints/last.ckpt]
[--out new_concept_out] [--steps N] [--num_new N] [--num_replay N]``; it ends with the accuracies, the
trainable share and whether the targets (new colour ≥ 0.90; old colour and direction ≥ 0.95) were met.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from demo import last_checkpoint, probe, run  # the demo's command helpers

NEW = "magenta"
PALETTE = ["red", "green", "blue", "yellow", NEW]
#: The linears the adapters wrap: the DiT's declared LoRA targets (attention and MLP of the blocks)
#: plus the caption projection, through which the new word reaches the model.
TARGETS = ["blocks.*.qkv", "blocks.*.proj", "blocks.*.fc1", "blocks.*.fc2", "context_proj.fc1", "context_proj.fc2"]
#: (prompt set, attribute, target): what the check requires after training.
GOALS = (("new", "colour", 0.90), ("old", "colour", 0.95), ("old", "direction", 0.95))


def word_row_is_new(word: str, captions: list[str], vocab_size: int = 4096) -> bool:
    """Whether ``word`` hashes to an embedding row of :class:`lvdm.text.words.WordTextEncoder` that
    no word of ``captions`` uses (so the frozen encoder gives it a vector of its own)."""
    def row(w: str) -> int:
        return 1 + zlib.crc32(w.encode("utf-8")) % (vocab_size - 1)

    seen = {row(w) for text in captions for w in text.lower().split()}
    return row(word) not in seen


def lora_fit_command(lvdm: list[str], base: Path, train: list[Path], val: Path, run_dir: Path, args) -> list[str]:
    """``lvdm fit`` of the demo's video recipe as a LoRA run on ``base`` (see the module docstring)."""
    return lvdm + [
        "fit", "--config", "recipes/demo/video.yaml",
        "--data.init_args.train_shards", json.dumps([str(p / "train-*.tar") for p in train]),
        "--data.init_args.val_shards", str(val / "val-*.tar"),
        "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", str(args.steps),
        "--trainer.val_check_interval", str(args.steps), "--trainer.log_every_n_steps", "25",
        "--model.init_args.optimizer.init_args.lr", str(args.lr),
        "--model.init_args.lr_scheduler.init_args.warmup_steps", "20",
        "--trainer.callbacks+=lvdm.training.callbacks.warm_start.InitFrom", "--trainer.callbacks.source", str(base),
        "--trainer.callbacks.module=", "--trainer.callbacks.prefix=", "--trainer.callbacks.strict", "true",
        "--trainer.callbacks+=lvdm.training.callbacks.lora_training.LoRA",
        "--trainer.callbacks.rank", str(args.rank), "--trainer.callbacks.alpha", str(args.rank),
        "--trainer.callbacks.targets", json.dumps(TARGETS),
    ]


def trainable_share(adapter: Path, base: Path) -> tuple[int, int, int]:
    """(adapter parameters, base parameters, base denoiser parameters), counted in the checkpoints."""
    import torch

    def sizes(path: Path) -> dict[str, int]:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        return {k: v.numel() for k, v in state.items()}

    base_sizes = sizes(base)
    return (sum(sizes(adapter).values()), sum(base_sizes.values()),
            sum(n for k, n in base_sizes.items() if k.startswith("denoiser.")))


def make_data(lvdm: list[str], out: Path, args) -> dict[str, Path]:
    """The new-concept and replay clips (equal shards, so the replay share is their clip share),
    encoded to latents; returns the latent folders and the two prompt files."""
    new, replay = out / "new", out / "replay"
    sets = ((new, ["--colours", json.dumps([NEW]), "--num_train", str(args.num_new)]),
            (replay, ["--num_train", str(args.num_replay), "--seed", "1"]))
    for data, options in sets:
        if not (data / "val_prompts.txt").exists():
            run(lvdm + ["data", "synth", "--out", str(data), "--num_val", "64", "--shard_size", str(args.shard_size),
                        *options])
        latents = data.with_name(data.name + "_latents")
        if not (latents / "val_prompts.txt").exists():
            run(lvdm + ["data", "encode", "--shards", str(data), "--out", str(latents)])
    return {"new": out / "new_latents", "replay": out / "replay_latents",
            "new_prompts": new / "val_prompts.txt", "old_prompts": replay / "val_prompts.txt"}


def score(lvdm: list[str], checkpoint: Path, data: dict[str, Path], out: Path, name: str) -> dict:
    """Probe accuracies of ``checkpoint`` on the new and the old held-out prompts."""
    colours = ["--colours", json.dumps(PALETTE)]
    return {which: probe(lvdm, checkpoint, data[f"{which}_prompts"], out / f"samples_{name}_{which}",
                         out / f"probe_{name}_{which}.json", (), colours)
            for which in ("new", "old")}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"  # None: the probe scored no prompt for it


def report(before: dict, after: dict, shares: tuple[int, int, int], seconds: float, out: Path) -> bool:
    """Print the before/after table and the trainable share; write ``<out>/result.json``; return
    whether every goal was met."""
    adapter, base, denoiser = shares
    print(f"\n=== LoRA learning check: the new colour {NEW!r} ===")
    print(f"trainable: {adapter:,} adapter parameters = {100 * adapter / base:.2f} % of the base's {base:,} "
          f"({100 * adapter / denoiser:.2f} % of its denoiser's {denoiser:,}); limit 5 % "
          f"{'ok' if adapter <= 0.05 * base else 'MISSED'}")
    print(f"  {'prompts':30s} {'':6s} colour shape direction")
    for which, label in (("new", f"new: held-out {NEW} (64)"), ("old", "old: the demo's held-out (64)")):
        for name, acc in (("before", before[which]), ("after", after[which])):
            print(f"  {label:30s} {name:6s} " + " ".join(f"{_fmt(acc[key]):>{len(key)}s}" for key in
                                                         ("colour", "shape", "direction")))
    reached = {(which, key): (after[which][key] or 0.0) >= target for which, key, target in GOALS}
    for which, key, target in GOALS:
        print(f"  {which} {key}: {_fmt(after[which][key])} (target ≥ {target:.2f}) "
              f"{'ok' if reached[which, key] else 'MISSED'}")
    met = all(reached.values()) and adapter <= 0.05 * base
    print(f"total {seconds:.0f} s; {'all targets met' if met else 'TARGETS MISSED'}")
    (out / "result.json").write_text(json.dumps({"before": before, "after": after, "adapter_parameters": adapter,
                                                 "base_parameters": base, "seconds": round(seconds)}, indent=1) + "\n")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="demo_out/run_video/checkpoints/last.ckpt",
                        help="the trained demo video model (read only)")
    parser.add_argument("--out", default="new_concept_out", help="folder for data, the adapter, videos and results")
    parser.add_argument("--steps", type=int, default=600, help="LoRA training steps (batch 16)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the adapters")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = rank)")
    parser.add_argument("--num_new", type=int, default=1000, help="training clips of the new colour")
    parser.add_argument("--num_replay", type=int, default=1000, help="training clips of the old colours (replay)")
    parser.add_argument("--shard_size", type=int, default=250, help="clips per shard (equal shards: shares by clips)")
    args = parser.parse_args()

    base = Path(args.base).resolve()
    if not base.is_file():
        sys.exit(f"no base checkpoint {base}: run `make demo` (or examples/demo.py) first, or pass --base")
    script = Path(sys.executable).parent / "lvdm"
    lvdm = [str(script)] if script.exists() else [sys.executable, "-m", "lvdm.cli"]
    out = Path(args.out).resolve()
    start = time.time()
    data = make_data(lvdm, out, args)
    old_captions = data["old_prompts"].read_text().splitlines()
    if not word_row_is_new(NEW, old_captions):
        sys.exit(f"{NEW!r} shares an embedding row with an old word: the frozen text encoder cannot tell them apart")
    before = score(lvdm, base, data, out, "base")
    run(lora_fit_command(lvdm, base, [data["new"], data["replay"]], data["new"], out / "run_lora", args))
    adapter = last_checkpoint(out / "run_lora")
    after = score(lvdm, adapter, data, out, "lora")
    met = report(before, after, trainable_share(adapter, base), time.time() - start, out)
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
