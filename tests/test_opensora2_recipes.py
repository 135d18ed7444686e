"""recipes/opensora2: the real-size stages parse and build on meta with Open-Sora 2.0's published
parameter count; the tiny stages run end to end on CPU (tiny random T5 and CLIP saved by the test),
stage 2 from stage 1's checkpoint, and ``lvdm sample`` reads the result."""

from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from lvdm.cli import main
from lvdm.models.presets import from_name, published
from lvdm.shapes.synthetic import ALL_COMBOS, caption, write_synthetic_dataset
from lvdm.text.tiny import build_tiny_t5
from test_opensora_recipes import _printed_config as printed_config  # lvdm fit --print_config, parsed

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["stage1_image", "stage2_video"]


def build_on_meta(spec: dict) -> torch.nn.Module:
    """The denoiser a recipe's ``class_path`` / ``init_args`` spec names, built on the meta device."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--denoiser", type=torch.nn.Module)
    with torch.device("meta"):
        return parser.instantiate(parser.parse_object({"denoiser": spec})).denoiser


@pytest.mark.parametrize("stage", STAGES)
def test_real_size_stage_parses_and_builds_on_meta(stage, capsys):
    config = printed_config(ROOT / f"recipes/opensora2/{stage}.yaml", capsys)
    trainer = config["trainer"]
    assert trainer["strategy"]["class_path"].endswith("DeepSpeedStrategy")
    assert trainer["strategy"]["init_args"]["stage"] == 2 and trainer["num_nodes"] > 1
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in trainer["callbacks"]}
    assert callbacks["ActivationCheckpointing"]["fraction"] == 1.0
    init = config["model"]["init_args"]
    assert init["text_encoder"]["class_path"] == "lvdm.text.pooled.PooledTextEncoder"
    assert init["compressor"]["init_args"]["pretrained"] == "hunyuanvideo-community/HunyuanVideo"
    objective, published_objective = init["objective"]["init_args"], from_name("opensora-2.0").sampler.objective[1]
    assert {k: objective[k] for k in published_objective} == {  # the preset's sampler: its token-count shift
        k: list(v) if isinstance(v, tuple) else v for k, v in published_objective.items()}
    assert objective["token_shift"] == "opensora2"
    model = build_on_meta(init["denoiser"])
    assert sum(p.numel() for p in model.parameters()) == from_name("opensora-2.0").num_params == 11_891_390_528
    if stage == "stage2_video":
        assert callbacks["InitFrom"] == dict(callbacks["InitFrom"], source="runs/opensora2/stage1/checkpoints/last.ckpt",
                                             strict=True)
    else:
        assert "InitFrom" not in callbacks


def test_published_names_every_mmdit_and_diffusers_preset():
    from typing import get_args

    from lvdm.models.presets import TABLE, PublishedName

    assert set(get_args(PublishedName)) == {n for n, p in TABLE.items() if p.backbone not in ("STDiT", "DiT")}


def test_published_refuses_an_argument_of_another_backbone():
    with pytest.raises(ValueError, match=r"published\('opensora-2.0'\): \['num_layers'\] are not arguments of its MMDiT"):
        published("opensora-2.0", num_layers=2)


def test_init_from_reads_open_sora_2_weights(tmp_path):
    """Stage 1 may start from the published weights: InitFrom reads an ``Open_Sora_v2.safetensors``
    (its released key layout, tiny sizes) strictly into the preset's MMDiT, every weight carried."""
    import json

    from safetensors.torch import save_file

    from lvdm.checkpoints.init_from import init_from
    from lvdm.models.convert import opensora2

    keys = json.loads((ROOT / "tests/models/opensora2_tiny_keys.json").read_text())
    torch.manual_seed(0)
    sd = {k: torch.randn(shape) for k, shape in keys["shapes"].items()}
    save_file(sd, tmp_path / "Open_Sora_v2.safetensors")
    kwargs = opensora2.mmdit_kwargs(keys["config"])
    model = published("opensora-2.0", **{k: kwargs[k] for k in (
        "in_channels", "hidden_size", "num_heads", "depth_double", "depth_single", "context_dim", "pooled_text_dim",
        "image_condition_channels", "rope_axes_dims")})
    report = init_from(model, str(tmp_path / "Open_Sora_v2.safetensors"), strict=True, prefix="", verbose=False)
    assert "(Open-Sora 2.0 layout): carried" in report.format() and not report.new and not report.unexpected
    assert len(report.carried) == len(model.state_dict())
    assert torch.equal(model.final_layer.adaLN_modulation[1].weight, sd["final_layer.adaLN_modulation.1.weight"])


def save_tiny_clip(path: Path, tokenizer_folder: Path) -> None:
    """A tiny random CLIP text model (8 wide) with the word tokenizer saved in ``tokenizer_folder``."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_folder)
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=8, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.mark.parametrize("stage", STAGES)
def test_tiny_stage_keeps_the_opensora2_options(stage, capsys):
    """The fast check kept in the default run: the tiny stage parses and its MMDiT is Open-Sora 2.0's
    layout at toy size (the end-to-end run below is slow)."""
    config = printed_config(ROOT / f"recipes/opensora2/tiny/{stage}.yaml", capsys)
    model = build_on_meta(config["model"]["init_args"]["denoiser"])
    assert (model.text_mask, model.guidance_embed, model.rope_theta, model.image_condition_channels) == (
        False, False, 10000.0, 4)
    assert isinstance(model.context_embedder, torch.nn.Linear)  # refiner_depth 0: Flux's txt_in


@pytest.mark.slow
def test_tiny_stages_run_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipes' relative paths (data/, runs/) land here
    write_synthetic_dataset("data/shapes", num_train=12, num_val=2, shard_size=12)
    t5 = build_tiny_t5("runs/opensora2_tiny/t5", [caption(*c) for c in ALL_COMBOS], d_model=16)
    save_tiny_clip(Path("runs/opensora2_tiny/clip"), t5)
    reports = {}
    for stage in STAGES:
        capsys.readouterr()
        main(["fit", "--config", str(ROOT / f"recipes/opensora2/tiny/{stage}.yaml")])
        reports[stage] = capsys.readouterr().out
    assert "new (kept their initialisation): 0" in reports["stage2_video"]
    last = torch.load("runs/opensora2_tiny/stage2/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3 and "denoiser.cond_embedder.proj.weight" in last["state_dict"]
    main(["sample", "--checkpoint", "runs/opensora2_tiny/stage2/checkpoints/last.ckpt", "--prompts",
          '["a red square moving left"]', "--out", "samples", "--steps", "2"])
    assert [p.name for p in Path("samples").glob("*.mp4")] == ["00000_a_red_square_moving_left.mp4"]
