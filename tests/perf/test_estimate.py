"""`lvdm estimate`: Factorial Fund's Sora cost analysis (DiT-XL/2 per-step FLOPs, GPU-hours) reproduced, recipes read, memory model."""

from pathlib import Path

import pytest
import torch

from lvdm.cli import main
from lvdm.models.dit import DiT
from lvdm.checkpoints.stored_recipe import UnsafeCheckpointError
from lvdm.perf.estimate import MemoryModel, estimate
from lvdm.perf.step_flops import DiTShape

ROOT = Path(__file__).resolve().parents[2]

# DiT-XL/2 (ImageNet 512², 524.6 "Gflops" = MACs) × 30 (a ~20B model) × 180 latent frames
# (one minute at 24 fps, 8× temporal compression), 250 steps, no guidance, 100% of an H100.
SEED_ARGS = [
    "--size", "XL/2", "--conditioning", "adaln", "--layout", "full", "--num_classes", "1000",
    "--frames", "1", "--height", "512", "--width", "512", "--linear_frames", "180", "--model_scale", "30",
    "--video_seconds", "60", "--sampling_steps", "250", "--guidance", "false", "--mfu", "1.0",
    "--gpu", "h100-sxm", "--convention", "macs",
]


def test_seed_example_reproduces_the_sora_cost_analysis(capsys):
    main(["estimate", *SEED_ARGS, "--training_flops", "1.08e25"])  # 1e21 × 30 × 4 × 180/2
    out = capsys.readouterr().out
    assert "sampling step (no CFG)  2.832e+15" in out  # seed: 524e9 × 30 × 180 ≈ 2.8e15
    assert "7.081e+17" in out  # seed: 708e15 per video
    assert "5.03 min of video per GPU-hour" in out  # seed: about 5 minutes per H100-hour
    assert "4,211.3 GPU-months" in out  # seed: 4211 H100s for a month
    assert "(15.25 M minutes of video)" in out  # seed: crossover after 15.3 million minutes


def test_seed_optimistic_and_flop_convention():
    r = estimate(**_seed_kwargs(), training_flops=2.7e25, print_report=False)  # 1e21 × 30 × 10 × 90
    assert r["training_gpu_months"] == pytest.approx(10528, rel=1e-3)  # seed: 10528 H100-months
    assert r["crossover_video_minutes"] / 1e6 == pytest.approx(38.1, abs=0.05)  # seed: 38.1 M minutes
    # counted as real FLOPs (2 per multiply-add, what the H100 peak means) a minute costs twice as much
    real = estimate(**{**_seed_kwargs(), "convention": "flops"}, print_report=False)
    assert real["video_minutes_per_gpu_hour"] == pytest.approx(r["video_minutes_per_gpu_hour"] / 2)


def _seed_kwargs():
    return dict(size="XL/2", conditioning="adaln", layout="full", num_classes=1000, frames=1, height=512, width=512,
                linear_frames=180, model_scale=30, video_seconds=60, sampling_steps=250, guidance=False, mfu=1.0,
                convention="macs")


def test_recipe_is_read_and_matches_the_built_model():
    recipe = ROOT / "recipes/tiny/cross_attn.yaml"
    r = estimate(recipe=str(recipe), print_report=False)
    model = DiT(in_channels=3, patch_size=[2, 4, 4], hidden_size=96, depth=3, num_heads=4,
                conditioning="cross_attn", layout="full", context_dim=64)
    assert r["params"] == sum(p.numel() for p in model.parameters())
    assert r["tokens"] == 4 * 8 * 8 and r["text_len"] == 8  # 8×32×32 pixels, patch (2, 4, 4); max_length 8
    assert r["training_samples"] == 300 * 256  # max_steps × global batch
    # a flag overrides the recipe
    assert estimate(recipe=str(recipe), text_len=20, print_report=False)["text_len"] == 20


def test_memory_model():
    shape = DiTShape.from_kwargs(size="XL/2", conditioning="cross_attn", layout="spatial_temporal", context_dim=4096)
    r = estimate(size="XL/2", num_gpus=8, micro_batch=2, print_report=False)["memory_per_gpu"]
    p = shape.num_params
    assert r["ddp"]["states"] == 18 * p
    assert r["zero2"]["states"] == pytest.approx(2 * p + 14 * p / 8)
    assert r["zero3_offload"]["states"] < r["zero3"]["states"] < r["zero2"]["states"] < r["ddp"]["states"]
    ckpt = estimate(size="XL/2", num_gpus=8, micro_batch=2, checkpoint_fraction=1.0, print_report=False)
    assert ckpt["memory_per_gpu"]["ddp"]["activations"] < r["ddp"]["activations"] / 5
    sp = estimate(size="XL/2", num_gpus=8, micro_batch=2, sp_size=2, print_report=False)["memory_per_gpu"]
    assert sp["ddp"]["activations"] == pytest.approx(r["ddp"]["activations"] / 2)
    # recomputation costs one more forward of the blocks
    assert ckpt["training_flops_per_sample"] == estimate(size="XL/2", print_report=False)["training_flops_per_sample"]


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown gpu 'h1000'"):
        estimate(gpu="h1000", print_report=False)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        estimate(recipe=str(tmp_path / "nope.yaml"), print_report=False)
    with pytest.raises(ValueError, match="16×250×256 does not fit the compression.*height, width divisible by 8"):
        estimate(height=250, print_report=False)
    with pytest.raises(ValueError, match="mfu"):
        estimate(mfu=1.5, print_report=False)


def test_estimate_help_lists_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["estimate", "--help"])
    out = capsys.readouterr().out
    assert "--recipe" in out and "--checkpoint_fraction" in out and "--convention" in out


def test_adaln_single_passes_through(capsys):
    main(["estimate", "--adaln_single", "true", "--print_report", "true"])
    out = capsys.readouterr().out
    assert "cross_attn/spatial_temporal adaLN-single" in out
    single = estimate(adaln_single=True, print_report=False)
    per_block = estimate(print_report=False)
    shape = DiTShape.from_kwargs(size="XL/2", conditioning="cross_attn", layout="spatial_temporal", context_dim=4096,
                                 adaln_single=True)
    assert single["params"] == shape.num_params and 0.75e9 < single["params"] < 0.78e9
    assert per_block["params"] > 1.08e9
    # 28 per-block adaLN linears + the final one become one shared linear: fewer FLOPs, same blocks
    assert single["forward_flops_per_sample"] < per_block["forward_flops_per_sample"]
    assert single["breakdown"].components["mlp"] == per_block["breakdown"].components["mlp"]


def test_bucket_memory_per_bucket_flags_what_does_not_fit(capsys):
    from pathlib import Path

    from lvdm.perf.estimate import MemoryModel, estimate, memory_per_gpu

    root = Path(__file__).resolve().parents[2]
    r = estimate(size="XL/2", gpu="h100-sxm", buckets=str(root / "buckets/opensora12.yaml"), strategy="zero2",
                 num_gpus=8, checkpoint_fraction=1.0)
    rows = {row["bucket"]: row for row in r["buckets"]}
    # hand check of one bucket: 144p/51f/144x256 with an 8x VAE and 2x2 patches: 51 x 9 x 16 tokens, batch 51
    row = rows["144p/51f/144x256"]
    assert row["tokens"] == 51 * 9 * 16 and row["batch_size"] == 51
    with torch.device("meta"):
        model = DiT(size="XL/2", conditioning="cross_attn", layout="spatial_temporal", context_dim=4096)
    mem = MemoryModel.from_model(model, (16, 32, 32), 120)  # estimate's default clip: 16×256×256, 120 tokens
    expected = memory_per_gpu(mem, 51 * 9 * 16, 51, 8, 1, 1.0)["zero2"]["total"]
    assert row["total"] == expected and row["fits"] == (expected <= 80e9)
    # a 1-frame bucket is small; the 408-frame 144p bucket at batch 6 is far beyond 80 GB without checkpointing
    assert rows["144p/1f/144x256"]["fits"]
    big = estimate(size="XL/2", gpu="h100-sxm", buckets=str(root / "buckets/opensora12.yaml"), print_report=True)
    assert not {row["bucket"]: row for row in big["buckets"]}["144p/408f/144x256"]["fits"]
    out = capsys.readouterr().out
    assert "memory per GPU by bucket (ddp" in out and "NO: lower its batch size" in out and "buckets do not fit" in out


def test_bucket_file_without_buckets_is_named(tmp_path):
    from lvdm.perf.estimate import estimate

    bad = tmp_path / "none.yaml"
    bad.write_text("data:\n  init_args:\n    batch_size: 4\n")
    with pytest.raises(ValueError, match="holds no bucket config"):
        estimate(size="XL/2", buckets=str(bad), print_report=False)


def test_an_stdit_recipe_is_estimated_with_its_exact_parameters(capsys):
    """An Open-Sora recipe (an STDiT preset) used to be refused ("models a DiT denoiser")."""
    from lvdm.models.presets import preset

    recipe = str(ROOT / "recipes/opensora/tiny/phase2_video.yaml")
    r = estimate(recipe=recipe, print_report=True)
    model = preset("opensora-v1.0-stdit-xl2", in_channels=3, patch_size=[1, 4, 4], hidden_size=48, depth=2,
                   num_heads=2, context_dim=32, context_length=8, base_size=8, interpolation_scale=1.0)
    assert r["params"] == sum(p.numel() for p in model.parameters())
    assert r["tokens"] == 4 * 8 * 8 and r["text_len"] == 8
    assert r["forward_flops_per_sample"] == sum(model.forward_flops((4, 32, 32), 8).values())
    assert r["memory_per_gpu"]["ddp"]["states"] == 18 * r["params"]
    assert r["memory_per_gpu"]["ddp"]["activations"] > 0
    assert "STDiT D=48 blocks=2 heads=2 patch=(1, 4, 4) inline" in capsys.readouterr().out


def test_another_backbone_with_its_defaults_and_a_preset_by_name(tmp_path):
    """No DiT default (size XL/2) is pushed onto another backbone's arguments."""
    from lvdm.models.presets import from_name
    from lvdm.models.stdit import STDiT

    recipe = tmp_path / "stdit.yaml"
    recipe.write_text("model:\n  init_args:\n    denoiser:\n      class_path: lvdm.models.stdit.STDiT\n")
    with torch.device("meta"):
        expected = sum(p.numel() for p in STDiT().parameters())
    assert estimate(recipe=str(recipe), print_report=False)["params"] == expected
    recipe.write_text("model:\n  init_args:\n    denoiser:\n      class_path: lvdm.models.presets.preset\n"
                      "      init_args: {name: pixart-alpha-xl2-256}\n")
    r = estimate(recipe=str(recipe), print_report=False)
    assert r["params"] == from_name("pixart-alpha-xl2-256").num_params == 610_856_096  # the published count
    assert r["tokens"] == 16 * 16 * 16 and r["text_len"] == 120  # the default 16×256×256 clip, patch (1, 2, 2)


def test_a_dit_flag_on_another_backbone_and_a_foreign_class_are_named(tmp_path):
    recipe = str(ROOT / "recipes/opensora/tiny/phase2_video.yaml")
    with pytest.raises(ValueError, match="presets.preset does not take these arguments.*conditioning"):
        estimate(recipe=recipe, conditioning="adaln", print_report=False)
    bad = tmp_path / "linear.yaml"
    bad.write_text("model:\n  init_args:\n    denoiser:\n      class_path: torch.nn.Linear\n"
                   "      init_args: {in_features: 2, out_features: 2}\n")
    with pytest.raises(ValueError, match="torch.nn.Linear builds a Linear, which does not meet the backbone contract"):
        estimate(recipe=str(bad), print_report=False)
    bad.write_text("model:\n  init_args:\n    denoiser:\n      class_path: lvdm.models.nothing.Here\n")
    with pytest.raises(ValueError, match="'lvdm.models.nothing.Here', which does not exist"):
        estimate(recipe=str(bad), print_report=False)
    bad.write_text("model:\n  init_args:\n    denoiser:\n      class_path: os.system\n")  # a recipe runs no code
    with pytest.raises(UnsafeCheckpointError, match="'os.system', outside the packages"):
        estimate(recipe=str(bad), print_report=False)
    bad.write_text("model:\n  init_args:\n    denoiser:\n      class_path: lvdm.models.stdit.STDiT\n")  # its own defaults
    assert estimate(recipe=str(bad), print_report=False)


def _saved_bytes(model, *args) -> int:
    """Bytes of the tensors autograd saves for backward in one forward (each storage once;
    parameters and buffers left out)."""
    skip = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(*args)
    return sum(seen.values())


def _tiny(kind: str, depth: int, **options):
    from lvdm.models.stdit import STDiT

    dims = dict(in_channels=4, patch_size=[1, 2, 2], hidden_size=64, depth=depth, num_heads=4, context_dim=32)
    return DiT(**dims, **options) if kind == "DiT" else STDiT(**dims, **options)


@pytest.mark.parametrize("kind, options", [
    ("DiT", dict(conditioning="cross_attn", layout="full")),
    ("DiT", dict(conditioning="cross_attn", layout="spatial_temporal")),
    ("DiT", dict(conditioning="adaln", layout="full")),
    ("DiT", dict(conditioning="cross_attn", layout="spatial_temporal", adaln_single=True, qk_norm=True)),
    ("STDiT", dict(qk_norm=True)),  # Open-Sora 1.2's STDiT3 layout
    ("STDiT", dict(temporal_cross_attention=False, temporal_position="sincos_stream")),  # Latte
    ("STDiT", dict(temporal="inline", temporal_position="sincos_branch")),  # Open-Sora 1.0
    ("STDiT", dict(temporal="none", temporal_position="none")),  # PixArt-α
])
def test_activation_memory_matches_what_autograd_saves(kind, options):
    """The memory model's activations per block against the tensors autograd really saves
    (float32, CPU) on tiny models: the blocks' share is the difference between depth 4 and depth
    2. Tolerance 10 % (the rule counts linears and norms; measured 0.99-1.07 on these layouts)."""
    torch.manual_seed(0)
    latent, text_len, batch = (4, 16, 16), 8, 2
    x = torch.randn(batch, 4, *latent)
    args = (x, torch.rand(batch) * 999, torch.randn(batch, text_len, 32), torch.ones(batch, text_len, dtype=torch.bool))
    tokens = batch * 4 * 8 * 8
    measured = (_saved_bytes(_tiny(kind, 4, **options), *args) - _saved_bytes(_tiny(kind, 2, **options), *args)) / 2

    def modelled(depth):
        mem = MemoryModel.from_model(_tiny(kind, depth, **options).to("meta"), latent, text_len)
        return mem.activation_bytes(tokens, bytes_per_value=4)

    assert (modelled(4) - modelled(2)) / 2 == pytest.approx(measured, rel=0.10)


def test_parameters_and_gathered_block_are_exact_for_every_backbone():
    for kind, options in [("DiT", dict(conditioning="cross_attn", layout="spatial_temporal")), ("STDiT", {})]:
        model = _tiny(kind, 3, **options)
        mem = MemoryModel.from_model(model.to("meta"), (4, 16, 16), 8)
        assert mem.num_params == sum(p.numel() for p in model.parameters())
        assert mem.block_params == sum(p.numel() for p in model.blocks[0].parameters())
        assert len(mem.unit_values) == (3 if kind == "DiT" else 6)  # STDiT3: spatial + temporal units


@pytest.mark.parametrize("name,params", [
    ("hunyuanvideo", 12_821_012_544), ("opensora-2.0", 11_891_390_528), ("wan2.1-t2v-1.3b", 1_418_996_800),
])
def test_modern_presets_at_720p_129_frames_match_the_flop_counter(name, params, capsys):
    """`lvdm estimate --preset NAME --frames 129 --height 720 --width 1280`: the published
    parameter count, the causal VAE's 33 latent frames (1 + 128 / 4) and a forward whose FLOPs
    equal torch's FlopCounterMode on the same meta model, plus memory per GPU for every strategy."""
    from lvdm.models.presets import from_name
    from lvdm.perf.step_flops import meta_forward_flops

    r = estimate(preset=name, frames=129, height=720, width=1280, num_gpus=8, print_report=True)
    assert r["params"] == params == from_name(name).num_params
    assert r["latent"] == (33, 90, 160) and r["tokens"] == 33 * 45 * 80
    with torch.device("meta"):
        model = from_name(name).build()
    counted = meta_forward_flops(model, (model.in_channels, 33, 90, 160), text_len=r["text_len"],
                                 context_dim=model.context_dim)
    assert r["forward_flops_per_sample"] == counted
    assert set(r["memory_per_gpu"]) == {"ddp", "zero2", "zero3", "zero3_offload"}
    assert r["memory_per_gpu"]["zero2"]["states"] == 2 * params + 14 * params / 8
    assert f"parameters   {params / 1e6:,.1f} M" in capsys.readouterr().out


def test_preset_defaults_and_refusals():
    """A preset brings its source's clip (Wan: 832×480 × 81 frames → 21 latent frames, 512 caption
    tokens, CFG) and sampler steps; architecture flags, a recipe and clips the causal VAE cannot
    code are refused by name."""
    r = estimate(preset="wan2.1-t2v-1.3b", print_report=False)
    assert r["latent"] == (21, 60, 104) and r["text_len"] == 512
    assert r["flops_per_sampling_step"] == 2 * r["forward_flops_per_sample"]  # CFG: two forwards
    hunyuan = estimate(preset="hunyuanvideo", frames=1, height=256, width=256, print_report=False)
    assert hunyuan["flops_per_sampling_step"] == hunyuan["forward_flops_per_sample"]  # embedded guidance
    with pytest.raises(ValueError, match="--preset hunyuanvideo fixes the architecture: drop --size"):
        estimate(preset="hunyuanvideo", size="XL/2", print_report=False)
    with pytest.raises(ValueError, match="drop --recipe"):
        estimate(preset="hunyuanvideo", recipe=str(ROOT / "recipes/tiny/adaln.yaml"), print_report=False)
    with pytest.raises(ValueError, match=r"clip 128×720×1280 .*frames - 1 divisible by 4 \(causal\)"):
        estimate(preset="hunyuanvideo", frames=128, height=720, width=1280, print_report=False)
    with pytest.raises(ValueError, match="unknown preset 'wan-99b'"):
        estimate(preset="wan-99b", print_report=False)
