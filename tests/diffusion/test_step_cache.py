"""Step caching (lvdm.diffusion.step_cache, ``teacache`` and ``first_block``): off is bit-identical, a
cache that never skips is bit-identical through every backbone's ``run_blocks`` hook, a high
threshold evaluates the block stack fewer times (first and last step always) with a bounded
change, a reused residual is exact where the stack's residual does not move (known answers), and
bad thresholds and modes are refused."""

import math

import pytest
import torch
from torch import nn

from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.diffusion.step_cache import MODES, StepCache, cached_steps, check_mode, check_threshold
from lvdm.generation.generator import Request
from lvdm.models.dit import DiT
from lvdm.models.mmdit import MMDiT
from lvdm.models.stdit import STDiT
from lvdm.text.words import WordTextEncoder
from lvdm.training.module import LatentDiffusionModule

CTX = 8


BACKBONES = {
    "dit-full": lambda: DiT(in_channels=2, hidden_size=24, depth=2, num_heads=2, patch_size=(1, 2, 2),
                            context_dim=CTX, conditioning="adaln"),
    "dit-st-in-context": lambda: DiT(in_channels=2, hidden_size=24, depth=2, num_heads=2, patch_size=(1, 2, 2),
                                     context_dim=CTX, conditioning="in_context", layout="spatial_temporal"),
    "stdit3": lambda: STDiT(in_channels=2, hidden_size=24, depth=2, num_heads=2, patch_size=(1, 2, 2),
                            context_dim=CTX, context_length=3, base_size=2, temporal="blocks",
                            temporal_position="rope", qk_norm=True),
    "mmdit": lambda: MMDiT(in_channels=2, hidden_size=24, num_heads=2, depth_double=1, depth_single=1,
                           context_dim=CTX, refiner_depth=1, rope_axes_dims=(4, 4, 4), pooled_text_dim=0,
                           guidance_embed=False),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_cache_that_never_skips_is_bit_identical(name, mode, randomised, flow_sampler):
    """The block loop behind ``run_blocks`` computes what the backbone computed, whole or split
    after its first block (``first_block``): threshold 0 (off) and a threshold no step falls under
    give the uncached latents bit for bit."""
    model = randomised(BACKBONES[name]())
    sample = flow_sampler(model)
    with torch.no_grad():
        expected = sample()
        for threshold in (0, None, 1e-12):
            with cached_steps(model, threshold, 8, mode) as cache:
                assert torch.equal(sample(), expected)
            assert cache is None if not threshold else cache.skipped == 0 and cache.computed == 8
        assert "run_blocks" not in vars(model)  # the hook is the backbone's own again


@pytest.mark.parametrize("name, threshold, mode", [("dit-full", 0.1, "teacache"), ("stdit3", 0.1, "teacache"),
                                                   ("mmdit", 0.1, "teacache"), ("dit-full", 0.5, "first_block"),
                                                   ("dit-st-in-context", 0.5, "first_block"),
                                                   ("stdit3", 0.5, "first_block"), ("mmdit", 0.5, "first_block")])
def test_a_high_threshold_skips_the_middle_steps_with_a_bounded_change(name, threshold, mode, randomised,
                                                                       flow_sampler, count_block_runs):
    model = randomised(BACKBONES[name]())
    sample, runs, heads = flow_sampler(model, steps=10), count_block_runs(model, -1), count_block_runs(model)
    with torch.no_grad():
        full = sample()
        assert len(runs) == 10
        runs.clear(), heads.clear()
        with cached_steps(model, threshold, 10, mode) as cache:
            cached = sample()
    assert len(heads) == (10 if mode == "first_block" else len(runs))  # first_block: block 0 at every step
    assert cache.computed == len(runs) < 10 and cache.skipped == 10 - len(runs)
    assert not torch.equal(cached, full)
    assert (cached - full).abs().max() < 0.5 * full.abs().max()


def test_first_and_last_steps_always_compute(randomised, flow_sampler, count_block_runs):
    """Whatever the threshold, call 0 and call ``num_steps - 1`` run the blocks; between them the
    accumulated change of a huge threshold never triggers."""
    model = randomised(BACKBONES["dit-full"]())
    sample, runs = flow_sampler(model, steps=6), count_block_runs(model)
    computed_at = []
    with torch.no_grad(), cached_steps(model, 1e9, 6) as cache:
        model.blocks[0].register_forward_pre_hook(lambda *_: computed_at.append(cache.calls - 1))
        sample()
    assert computed_at == [0, 5] and len(runs) == 2 and cache.skipped == 4


class ToyBackbone(nn.Module):
    """Known answer: a block stack whose residual depends only on the (constant) modulation,
    ``blocks(x) = x + w · m``: reusing the residual is exact whatever the tokens."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, generator=torch.Generator().manual_seed(0)))
        self.stack_runs = 0

    def run_blocks(self, tokens, indicator, blocks):
        return blocks(tokens)

    def forward(self, x, modulation):
        def blocks(tokens):
            self.stack_runs += 1
            return tokens + self.w * modulation[:, None, None]

        return self.run_blocks(x, lambda: modulation, blocks)


def test_reused_residual_is_exact_when_the_stack_residual_does_not_move():
    toy, m = ToyBackbone(), torch.tensor([1.5, -2.0])
    xs = [torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    with torch.no_grad():
        expected = [x + toy.w * m[:, None, None] for x in xs]
        with cached_steps(toy, 0.01, 5) as cache:
            got = [toy(x, m) for x in xs]
    assert toy.stack_runs == 2 and cache.skipped == 3
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)


SAME_INPUT_CASES = [(name, per_frame) for name in sorted(BACKBONES) for per_frame in (False, True)
                    if not (per_frame and name == "dit-st-in-context")]  # in_context: one t per sample


@pytest.mark.parametrize("name, per_frame, mode", [(*case, "teacache") for case in SAME_INPUT_CASES]
                         + [(name, False, "first_block") for name in sorted(BACKBONES)])
def test_same_input_twice_reuses_a_residual_equal_to_running_the_blocks(name, per_frame, mode, assert_close_scaled,
                                                                       randomised):
    """A backbone called twice on the same latents and timestep (no change; per sample or per
    frame, as masked-frame conditioning gives): the second call skips the blocks and returns what
    running them returns."""
    model = randomised(BACKBONES[name]())
    gen = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 2, 2, 4, 4, generator=gen), torch.randn(2, 3, CTX, generator=gen)
    t = torch.tensor([[0.0, 500.0], [0.0, 700.0]]) if per_frame else torch.full((2,), 500.0)
    with torch.no_grad():
        expected = model(x, t, ctx)
        with cached_steps(model, 0.05, 3, mode) as cache:
            model(x, t, ctx)
            again = model(x, t, ctx)
    assert cache.skipped == 1
    assert_close_scaled(again, expected, rtol=1e-6)


def test_cfg_rows_keep_their_own_residual_and_a_new_batch_size_computes():
    """The residual has the batch dimension: each row of a guided batch reuses its own; a call
    whose batch differs from the cached one (a guidance interval's single half) computes."""
    toy = ToyBackbone()
    m2, m1 = torch.tensor([1.0, 3.0]), torch.tensor([1.0])
    with torch.no_grad(), cached_steps(toy, 0.5, 4) as cache:
        toy(torch.zeros(2, 3, 4), m2)
        out = toy(torch.ones(2, 3, 4), m2)  # reused: rows differ by their own modulation
        toy(torch.zeros(1, 3, 4), m1)  # another batch: computes
    torch.testing.assert_close(out, (1 + toy.w * m2[:, None, None]).expand(2, 3, 4))
    assert cache.skipped == 1 and toy.stack_runs == 2


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, "x"])
def test_bad_thresholds_are_refused_in_one_line(bad):
    with pytest.raises(ValueError, match=r"^step_cache threshold must be a finite number >= 0 .*got"):
        check_threshold(bad)
    with pytest.raises(ValueError, match="step_cache threshold"):
        Request(["a red square"], step_cache=bad)


def test_bad_modes_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^step_cache_mode must be one of teacache, first_block; got 'fast'$"):
        check_mode("fast")
    with pytest.raises(ValueError, match="step_cache_mode must be one of"):
        Request(["a red square"], step_cache=0.1, step_cache_mode="fast")
    with pytest.raises(ValueError, match="step_cache_mode must be one of"):
        cached_steps(nn.Linear(2, 2), 0.1, 4, "fast").__enter__()


def test_a_backbone_without_the_hook_refuses_caching():
    with pytest.raises(ValueError, match=r"Linear has no run_blocks\(tokens, indicator, blocks\) hook"):
        with cached_steps(nn.Linear(2, 2), 0.1, 4):
            pass
    with cached_steps(nn.Linear(2, 2), 0, 4) as cache:  # off: any model
        assert cache is None
    with pytest.raises(ValueError, match="num_steps >= 1"):
        StepCache(0.1, 0)


def test_generate_with_a_step_cache_under_guidance(randomised, count_block_runs):
    """``generate(step_cache=…)``: guided (batch 2B) sampling evaluates the blocks fewer times;
    0 is today's video bit for bit; a bad value fails before sampling."""
    dit = randomised(DiT(in_channels=3, patch_size=(1, 4, 4), hidden_size=32, depth=2, num_heads=2,
                          conditioning="cross_attn", context_dim=16))
    module = LatentDiffusionModule(dit, WordTextEncoder(dim=16, max_length=4), guidance_scale=3.0,
                                   objective=RectifiedFlow(num_sampling_steps=8), sample_shape=(2, 8, 8)).eval()
    runs = count_block_runs(dit)
    prompts = ["a red square", "a blue circle"]
    full = module.generate(prompts)
    assert torch.equal(module.generate(prompts, step_cache=0), full) and len(runs) == 16
    runs.clear()
    cached = module.generate(prompts, step_cache=0.3)
    assert 2 <= len(runs) < 8 and cached.shape == full.shape
    last = count_block_runs(dit, -1)
    module.generate(prompts, step_cache=0.5, step_cache_mode="first_block")
    assert 2 <= len(last) < 8
    with pytest.raises(ValueError, match="step_cache threshold"):
        module.generate(prompts, step_cache=-1)


def test_the_benchmark_runs_and_threshold_zero_changes_nothing():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_step_cache.py"
    spec = importlib.util.spec_from_file_location("bench_step_cache", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--steps", "6", "--hidden", "32", "--depth", "1", "--latent", "1", "4", "4",
                       "--repeats", "1", "--thresholds", "0.5"])
    assert [r["threshold"] for r in rows] == [0.0, 0.5]
    assert rows[0]["evaluations"] == 6 and rows[0]["max_abs_diff"] == 0
    assert 2 <= rows[1]["evaluations"] < 6
