"""recipes/wan: the real-size Wan 2.1 T2V 1.3B fine-tuning parses and builds on meta with the published
parameter count and the preset's sampler; the tiny variant trains on cached latents and cached umT5
embeddings (written by the test), from a tiny random Wan folder, and ``lvdm sample`` reads its checkpoint."""

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from lvdm.cli import main
from lvdm.curation.encode import encode_shards
from lvdm.data.datamodule import LatentDataModule
from lvdm.models.diffusers_adapter import build_wan
from lvdm.models.presets import from_name
from lvdm.shapes.synthetic import ALL_COMBOS, caption, write_synthetic_dataset
from lvdm.text.tiny import build_tiny_t5
from lvdm.text.umt5 import UMT5TextEncoder
from test_opensora2_recipes import build_on_meta, printed_config

ROOT = Path(__file__).resolve().parents[1]


def test_real_size_parses_and_builds_on_meta(capsys):
    config = printed_config(ROOT / "recipes/wan/t2v_1.3b.yaml", capsys)
    trainer = config["trainer"]
    assert trainer["strategy"]["init_args"]["stage"] == 2 and trainer["devices"] == 8
    init_from = next(c["init_args"] for c in trainer["callbacks"] if c["class_path"].endswith("InitFrom"))
    assert init_from["source"] == "models/Wan2.1-T2V-1.3B-Diffusers" and init_from["strict"] is True
    init = config["model"]["init_args"]
    assert config["data"]["class_path"] == "lvdm.data.datamodule.LatentDataModule"
    assert init["text_encoder"]["class_path"] == "lvdm.text.umt5.UMT5TextEncoder"
    preset = from_name("wan2.1-t2v-1.3b")
    objective = init["objective"]["init_args"]
    assert {k: objective[k] for k in preset.sampler.objective[1]} == preset.sampler.objective[1]
    assert init["guidance_scale"] == preset.sampler.guidance_scale
    model = build_on_meta(init["denoiser"])
    assert type(model).__name__ == "WanBackbone"
    assert sum(p.numel() for p in model.parameters()) == preset.num_params == 1_418_996_800


def test_tiny_variant_parses_and_builds(capsys):
    """The fast check kept in the default run (the training run below is slow)."""
    config = printed_config(ROOT / "recipes/wan/tiny/t2v.yaml", capsys)
    model = build_on_meta(config["model"]["init_args"]["denoiser"])
    assert type(model).__name__ == "WanBackbone" and len(model.transformer.blocks) == 2


def save_tiny_umt5(path: Path) -> UMT5TextEncoder:
    """A tiny random umT5 encoder (16 wide) with a word tokenizer of the shapes captions, saved to ``path``."""
    words = build_tiny_t5(path / "tokenizer_source", [caption(*c) for c in ALL_COMBOS], d_model=8, num_layers=1)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(words)
    torch.manual_seed(0)
    UMT5EncoderModel(UMT5Config(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32, vocab_size=len(tokenizer),
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                decoder_start_token_id=tokenizer.pad_token_id)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return UMT5TextEncoder(str(path), max_length=8)


@pytest.mark.slow
def test_tiny_variant_trains_on_cached_latents_and_text_and_samples(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipe's relative paths (data/, runs/) land here
    write_synthetic_dataset("data/shapes", num_train=8, num_val=2, shard_size=8)
    umt5 = save_tiny_umt5(Path("runs/wan_tiny/umt5"))
    torch.manual_seed(1)  # the "published" weights InitFrom loads: a tiny random Wan folder of the recipe's sizes
    build_wan(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=12, in_channels=3, out_channels=3,
              text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2).transformer.save_pretrained("runs/wan_tiny/base")
    summary = encode_shards("data/shapes/train-*.tar", "data/wan_tiny/latents", num_frames=4, resolution=32,
                            dtype="float32", text_encoder=umt5)
    assert summary["encoded"] == 8
    cached = LatentDataModule("data/wan_tiny/latents/train-*.tar", batch_size=2, samples_per_epoch=2)
    cached.setup("fit")
    batch = next(iter(cached.train_dataloader()))  # training reads umT5's tokens from the cache
    assert batch["text"].shape == (2, 8, 16) and batch["text_encoder_identity"][0].startswith("lvdm.text.umt5.")
    capsys.readouterr()
    main(["fit", "--config", str(ROOT / "recipes/wan/tiny/t2v.yaml")])
    assert "new (kept their initialisation): 0" in capsys.readouterr().out  # every weight from the Wan folder
    last = torch.load("runs/wan_tiny/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3
    main(["sample", "--checkpoint", "runs/wan_tiny/checkpoints/last.ckpt", "--prompts",
          '["a red square moving left"]', "--out", "samples", "--steps", "2"])
    assert [p.name for p in Path("samples").glob("*.mp4")] == ["00000_a_red_square_moving_left.mp4"]
