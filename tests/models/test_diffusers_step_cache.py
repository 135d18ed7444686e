"""Step caching through the diffusers adapters (lvdm.models.diffusers_adapter: WanBackbone,
LTXBackbone): their transformers' own block loops run through ``run_blocks`` while a cache is on
(the block list swapped for the call, and back afterwards, errors included); a cache that never
skips is bit-identical in both modes, a high threshold runs the blocks fewer times, per-token
timesteps give a usable indicator, and ``lvdm cache calibrate`` + ``step_cache='calibrated'`` work
on a tiny Wan inside LatentDiffusionModule."""

import pytest
import torch

from lvdm.checkpoints.load import load_module
from lvdm.cli import main
from lvdm.diffusion.cache_calibration import calibration_path
from lvdm.diffusion.step_cache import MODES, cached_steps
from lvdm.models.diffusers_adapter import WanBackbone, build_ltx, build_wan

CTX = 8
WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, freq_dim=16, ffn_dim=32, num_layers=2,
           rope_max_seq_len=32)
BACKBONES = {
    "wan": lambda: build_wan(**WAN, in_channels=2, out_channels=2, text_dim=CTX, text_length=None),
    "ltx": lambda: build_ltx(in_channels=2, out_channels=2, num_attention_heads=2, attention_head_dim=12, num_layers=2,
                             caption_channels=CTX),
}
#: the blocks and the output projection (zero at init: the model would predict 0)
PARTS = ("blocks", "proj_out")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_cache_that_never_skips_is_bit_identical(name, mode, randomised, flow_sampler):
    model = randomised(BACKBONES[name](), parts=PARTS)
    sample, blocks = flow_sampler(model), list(model.blocks)
    with torch.no_grad():
        expected = sample()
        for threshold in (0, 1e-12):
            with cached_steps(model, threshold, 8, mode) as cache:
                assert torch.equal(sample(), expected)
    assert cache.skipped == 0 and cache.computed == 8
    assert list(model.blocks) == blocks and "run_blocks" not in vars(model)  # diffusers' own loop again


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_high_threshold_skips_steps_with_a_bounded_change(name, mode, randomised, flow_sampler, count_block_runs):
    model = randomised(BACKBONES[name](), parts=PARTS)
    sample, runs, heads = flow_sampler(model, steps=10), count_block_runs(model, -1), count_block_runs(model)
    with torch.no_grad():
        full = sample()
        assert len(runs) == len(heads) == 10
        runs.clear(), heads.clear()
        with cached_steps(model, 0.3, 10, mode) as cache:
            cached = sample()
    assert len(heads) == (10 if mode == "first_block" else len(runs))  # first_block: block 0 at every step
    assert cache.computed == len(runs) < 10 and cache.skipped == 10 - len(runs)
    assert not torch.equal(cached, full)
    assert (cached - full).abs().max() < 0.5 * full.abs().max()


@pytest.mark.parametrize("per_frame", [False, True])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_same_input_twice_reuses_a_residual_equal_to_running_the_blocks(name, per_frame, randomised,
                                                                       assert_close_scaled):
    """Per-sample or per-token modulations (``temb`` ``[B, 6, D]`` / ``[B, N, 6, D]`` for Wan): an
    unchanged input gives an unchanged indicator, so the second call reuses, and gets what the blocks give."""
    model = randomised(BACKBONES[name](), parts=PARTS)
    gen = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 2, 2, 4, 4, generator=gen), torch.randn(2, 3, CTX, generator=gen)
    t = torch.tensor([[0.0, 500.0], [0.0, 700.0]]) if per_frame else torch.full((2,), 500.0)
    with torch.no_grad():
        expected = model(x, t, ctx)
        with cached_steps(model, 0.05, 3) as cache:
            model(x, t, ctx)
            again = model(x, t, ctx)
    assert cache.skipped == 1
    assert_close_scaled(again, expected, rtol=1e-6)


def test_the_block_list_comes_back_after_an_error_and_an_adapter_without_indicator_refuses(randomised):
    model = randomised(BACKBONES["wan"](), parts=PARTS)
    blocks, x = list(model.blocks), torch.randn(1, 2, 1, 4, 4)
    with cached_steps(model, 0.1, 4), pytest.raises(ValueError, match="no learned null caption"):
        model(x, torch.tensor([500.0]))  # fails inside the forward, after the swap
    assert list(model.blocks) == blocks

    class WithoutIndicator(WanBackbone):
        _modulated_input = None

    bare = WithoutIndicator(model.transformer, text_length=None)
    with cached_steps(bare, 0.1, 4, "first_block"), pytest.raises(ValueError, match=r"^WithoutIndicator does not "
                                                                                    "support step caching"):
        bare(x, torch.tensor([500.0]), torch.randn(1, 3, CTX))
    assert list(bare.blocks) == blocks


def test_calibrate_and_generate_a_tiny_wan_in_the_module(tmp_path, tiny_hparams, noisy_checkpoint, count_block_runs,
                                                          capsys):
    """``lvdm cache calibrate`` records a guided run of the module's Wan (the recorder drives the
    same swap) and writes thresholds; ``generate(step_cache=…)`` then runs the blocks fewer
    times, and 0 is the uncached video bit for bit."""
    wan = dict(WAN, patch_size=[1, 4, 4], in_channels=3, out_channels=3, text_dim=16, text_length=6)
    hparams = tiny_hparams(denoiser={"class_path": "lvdm.models.diffusers_adapter.build_wan", "init_args": wan},
                           objective={"class_path": "lvdm.diffusion.objectives.RectifiedFlow",
                                      "init_args": {"num_sampling_steps": 6}})
    checkpoint = noisy_checkpoint(tmp_path / "wan.ckpt", hparams, PARTS)
    prompts = '["a red square", "a blue circle"]'
    main(["cache", "calibrate", "--checkpoint", str(checkpoint), "--prompts", prompts, "--degree", "2",
          "--target_speedup", "1.5"])
    assert f"wrote {calibration_path(checkpoint)}" in capsys.readouterr().out
    module = load_module(checkpoint).module
    assert isinstance(module.denoiser, WanBackbone) and all(t > 0 for t in module.step_cache_calibration.thresholds.values())
    runs = count_block_runs(module.denoiser, -1)
    full = module.generate(["a red square"])
    assert torch.equal(module.generate(["a red square"], step_cache=0), full) and len(runs) == 12
    for mode in MODES:
        runs.clear()
        cached = module.generate(["a red square"], step_cache="calibrated", step_cache_mode=mode)
        assert 2 <= len(runs) < 6 and cached.shape == full.shape, mode
