"""Step-cache calibration (lvdm.diffusion.cache_calibration, ``lvdm cache calibrate``): the polynomial
fit recovers a known polynomial, the replay of the cache's rule counts what the cache computes, the
file round-trips and a bad one fails in one line naming it, ``load_module`` carries the calibration
and ``step_cache='calibrated'`` uses it (an explicit number overrides)."""

import json

import numpy as np
import pytest
import torch

from lvdm.checkpoints.load import load_module
from lvdm.cli import main
from lvdm.diffusion.cache_calibration import (Calibration, calibration_path, fit_polynomial, read_calibration,
                                              recording, replay_first_block, replay_teacache, suggest_threshold,
                                              write_calibration)
from lvdm.diffusion.step_cache import StepCache, cached_steps, rescale
from lvdm.generation.sample import sample


def test_fit_recovers_a_known_polynomial_and_rescale_evaluates_it():
    x = np.linspace(0.01, 0.3, 40)
    known = np.array([3.0, -2.0, 0.5, 0.01])  # 3x^3 - 2x^2 + 0.5x + 0.01
    y = np.polyval(known, x)
    np.testing.assert_allclose(fit_polynomial(x, y, degree=3), known, rtol=1e-6)
    fourth = fit_polynomial(x, y, degree=4)  # a higher degree finds a zero leading coefficient
    np.testing.assert_allclose(np.polyval(fourth, x), y, rtol=1e-8)
    assert abs(fourth[0]) < 1e-6
    got = rescale(torch.tensor(x), known.tolist())
    np.testing.assert_allclose(got.numpy(), np.polyval(known, x), rtol=1e-12)
    assert rescale(torch.tensor([1.0]), [-1.0, 0.0])[0] == 0  # floored at 0
    with pytest.raises(ValueError, match="a degree-4 fit needs more than 4"):
        fit_polynomial(x[:4], y[:4])


class Toy(torch.nn.Module):
    """A block stack whose indicator is a given modulation: the cache's decisions depend only on it."""

    def run_blocks(self, tokens, indicator, blocks):
        return blocks(tokens)

    def forward(self, x, modulation):
        def blocks(tokens, start=0, stop=None):  # block 0 adds the modulation, the rest twice it
            return tokens + modulation * ((start == 0) + 2 * (stop is None))

        return self.run_blocks(x, lambda: modulation, blocks)


def test_replay_counts_what_the_cache_computes():
    """``replay_teacache`` / ``replay_first_block`` on the recorded changes give the cache's block-stack
    runs (rescaled or not), where the indicator does not depend on what was skipped."""
    gen = torch.Generator().manual_seed(0)
    mods = [torch.rand(2, 3, generator=gen) + 1 for _ in range(12)]
    changes = torch.stack([(a - b).abs().mean(1) / b.abs().mean(1) for b, a in zip(mods, mods[1:])])
    toy, x = Toy(), torch.zeros(2, 3)
    for coefficients in (None, [2.0, 0.1]):
        for threshold in (0.05, 0.2, 0.6, 5.0):
            with cached_steps(toy, threshold, 12, calibration=None) as cache:
                cache.coefficients = coefficients
                for m in mods:
                    toy(x, m)
            assert replay_teacache(rescale(changes, coefficients), threshold) == cache.computed
            with cached_steps(toy, threshold, 12, "first_block") as cache:  # the head's residual: the modulation
                for m in mods:
                    toy(x, m)
            assert replay_first_block(mods, threshold) == cache.computed
    heads = [torch.full((1, 4), float(v)) for v in (1, 1.05, 1.1, 1.3, 1.31, 1.32, 2.0)]
    assert replay_first_block(heads, 0.12) == 3  # calls 0 and 6, and 3 (1.3 against 1); the others are close
    assert replay_first_block(heads, 1e-9) == 7


def test_suggested_threshold_is_the_smallest_reaching_the_target():
    changes = torch.full((20, 2), 0.1)  # 21 calls, constant change
    replay = lambda t: replay_teacache(changes, t)  # noqa: E731
    threshold, speedup = suggest_threshold(replay, 21, 2.0, 2.0)
    assert speedup >= 2 and 21 / replay(threshold / 1.03) < 2
    assert suggest_threshold(replay, 21, 2.0, 50.0)[1] == 21 / 2  # out of reach: the fastest there is


def _calibration(**over) -> Calibration:
    fields = dict(coefficients=(1.5, -0.2, 0.01), thresholds={"teacache": 0.2, "first_block": 0.3},
                  speedups={"teacache": 2.1, "first_block": 2.0}, target_speedup=2.0, steps=20)
    return Calibration(**{**fields, **over})


def test_the_file_round_trips_and_a_bad_file_fails_naming_it(tmp_path):
    path = write_calibration(_calibration(), tmp_path / "m.ckpt.step_cache.json")
    assert read_calibration(path) == _calibration(path=str(path))
    assert calibration_path(tmp_path / "m.ckpt") == path
    data = json.loads(path.read_text())
    bad = {"missing.json": None, "corrupt.json": "{not json", "list.json": "[1, 2]",
           "other.json": json.dumps({**data, "format": "x"}),
           "nokey.json": json.dumps({k: v for k, v in data.items() if k != "thresholds"}),
           "negative.json": json.dumps({**data, "thresholds": {"teacache": -1, "first_block": 0.3}}),
           "nan.json": json.dumps({**data, "coefficients": [1, "x"]}),
           "steps.json": json.dumps({**data, "steps": 0})}
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises((ValueError, FileNotFoundError)) as err:
            read_calibration(tmp_path / name)
        message = str(err.value)
        assert f"step-cache calibration {str(tmp_path / name)!r}" in message and "\n" not in message, name


@pytest.fixture()
def checkpoint(tmp_path, tiny_hparams, noisy_checkpoint):
    hparams = tiny_hparams(objective={"class_path": "lvdm.diffusion.objectives.RectifiedFlow",
                                      "init_args": {"num_sampling_steps": 6}})
    hparams["denoiser"]["init_args"]["depth"] = 2
    return noisy_checkpoint(tmp_path / "model.ckpt", hparams)


def test_load_module_carries_the_calibration_and_calibrated_uses_it(checkpoint):
    module = load_module(checkpoint).module
    assert module.step_cache_calibration is None
    with pytest.raises(ValueError, match=r"needs the model's calibration file \(<checkpoint>.step_cache.json"):
        module.generate(["a red square"], step_cache="calibrated")
    with pytest.raises(FileNotFoundError, match=f"the calibration file {str(calibration_path(checkpoint))!r} does "
                       "not exist; write it with `lvdm cache calibrate"):
        sample(str(checkpoint), ["a red square"], out=str(checkpoint.parent / "videos"), step_cache="calibrated")
    sidecar = write_calibration(_calibration(thresholds={"teacache": 1e9, "first_block": 1e9}),
                                calibration_path(checkpoint))
    module = load_module(checkpoint).module
    assert module.step_cache_calibration.path == str(sidecar)
    runs = []
    module.denoiser.blocks[-1].register_forward_pre_hook(lambda *_: runs.append(1))  # runs when the stack computes
    for mode in ("teacache", "first_block"):
        runs.clear()
        module.generate(["a red square"], step_cache="calibrated", step_cache_mode=mode)
        assert len(runs) == 2  # the huge calibrated threshold: first and last step only
        runs.clear()
        module.generate(["a red square"], step_cache=1e-12, step_cache_mode=mode)  # a number overrides
        assert len(runs) == 6
    sidecar.write_text("{")
    with pytest.raises(ValueError, match=f"step-cache calibration {str(sidecar)!r} is not readable JSON"):
        load_module(checkpoint)


def test_recording_changes_nothing_and_the_command_writes_the_file(checkpoint, capsys):
    """The recorder runs the split stack: the video is the uncached one bit for bit; ``lvdm cache
    calibrate`` writes ``<checkpoint>.step_cache.json``, which the next load reads."""
    module = load_module(checkpoint).module
    expected = module.generate(["a red square", "a blue circle"])
    with torch.no_grad(), recording(module.denoiser) as recorder:
        got = module.generate(["a red square", "a blue circle"])
    assert torch.equal(got, expected) and "run_blocks" not in vars(module.denoiser)
    assert len(recorder.indicator_change) == 5 and recorder.indicator_change[0].shape == (4,)  # 2 prompts x CFG
    assert recorder.head_fraction == 0.5  # the first of two blocks
    main(["cache", "calibrate", "--checkpoint", str(checkpoint), "--prompts", '["a red square", "a blue circle"]',
          "--degree", "2", "--target_speedup", "1.5"])
    assert f"wrote {calibration_path(checkpoint)}" in capsys.readouterr().out
    calibration = load_module(checkpoint).module.step_cache_calibration
    assert len(calibration.coefficients) == 3 and calibration.steps == 6
    assert all(t > 0 for t in calibration.thresholds.values())


def test_step_cache_needs_a_number():
    with pytest.raises(ValueError, match="StepCache needs a number"):
        StepCache("calibrated", 4)


def test_the_sampling_benchmark_prints_one_table(checkpoint, tmp_path, capsys):
    """benchmarks/bench_sampling.py on a tiny model: calibrates (no file yet), then every row on the
    same prompts; full sampling evaluates 2 rows x 6 steps per video, the cached rows fewer."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sampling.py"
    spec = importlib.util.spec_from_file_location("bench_sampling", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left\na blue circle moving up\na green triangle moving down\n")
    rows = bench.main(["--checkpoint", str(checkpoint), "--prompt_file", str(prompts), "--work", str(tmp_path / "w"),
                       "--batch_size", "2", "--calibration_prompts", "2", "--target_speedup", "1.5",
                       "--student", str(checkpoint), "--student_steps", "2"])
    names = [row["name"].split(" (")[0] for row in rows]
    assert names == ["full", "step cache", "first-block cache", "guidance interval [0.3, 0.7]", "student"]
    assert rows[0]["evaluations"] == 12 and rows[-1]["evaluations"] == 4
    assert all(row["evaluations"] < 12 for row in rows[1:])
    assert all(row["counts"]["colour"]["total"] == 3 for row in rows)
    out = capsys.readouterr().out
    assert "| full | 12.00 | 1.00x |" in out and (tmp_path / "w" / "step_cache.json").exists()
