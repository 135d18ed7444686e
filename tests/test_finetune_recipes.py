"""recipes/finetune: the real-size recipes parse and build on the meta device (parameter counts,
LoRA's trainable share); the tiny CPU variants train a few steps through the CLI on cached
latents and text embeddings, from a base InitFrom loads (a Wan diffusers folder, an lvdm
checkpoint); a LoRA run stopped by a crash resumes with ``--ckpt_path last`` on the loss curve of
an uninterrupted run, bit for bit (with AdamW, and with 8-bit AdamW where bitsandbytes is installed).

The default run keeps one of each kind (the CLI costs ~5 s a run on 2 cores): the full fine-tune
on meta and the tiny Wan T2V LoRA; ``-m slow`` runs the rest and the CLI resume, whose fast
variant is tests/callbacks/test_lora_training.py::test_adapter_only_checkpoint_resumes_exactly
(2 + 2 steps against 4 through the Trainer, the same checkpoint and restore path)."""

from pathlib import Path

import pytest
import torch
import yaml

from lvdm.cli import lightning_cli
from lvdm.finetune.lora import apply_lora, is_adapter_key
from lvdm.training.module import LatentDiffusionModule

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "recipes" / "finetune"
#: recipe → (parameters of its denoiser, whether it trains LoRA)
REAL = {
    "wan2.1_t2v_1.3b_lora": (1_418_996_800, True),  # the wan2.1-t2v-1.3b preset's count
    "wan2.1_i2v_1.3b_lora": (1_418_996_800, True),
    "wan2.1_t2v_14b_lora": (14_288_491_584, True),  # diffusers' WanTransformer3DModel with the 14B config
    "wan2.1_i2v_14b_lora": (14_288_491_584, True),
    "opensora_v1.2_lora": (1_207_643_936, True),  # the opensora-v1.2-stdit3-xl2 preset's count
    "wan2.1_t2v_1.3b_full": (1_418_996_800, False),
}


def _printed_config(recipe: Path, capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        lightning_cli(["--config", str(recipe), "--print_config"], run=False)
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    return yaml.safe_load("\n".join(line for line in lines if not line.startswith("[")))


def _slow_but(fast: str, names: list[str]) -> list:
    """``names`` as test parameters, every one but ``fast`` marked slow."""
    return [n if n == fast else pytest.param(n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _slow_but("wan2.1_t2v_1.3b_full", sorted(REAL)))
def test_real_size_recipe_parses_and_builds_on_meta(name, capsys):
    from jsonargparse import ArgumentParser

    config = _printed_config(FINETUNE / f"{name}.yaml", capsys)
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c.get("init_args") or {} for c in config["trainer"]["callbacks"]}
    parser = ArgumentParser()
    parser.add_argument("--denoiser", type=torch.nn.Module)
    with torch.device("meta"):
        model = parser.instantiate_classes(parser.parse_object({"denoiser": config["model"]["init_args"]["denoiser"]})).denoiser
    expected, lora = REAL[name]
    assert sum(p.numel() for p in model.parameters()) == expected
    assert callbacks["InitFrom"]["strict"] is True and callbacks["ActivationCheckpointing"]["fraction"] == 1.0
    assert config["data"]["class_path"].endswith("LatentDataModule")  # cached latents and text embeddings
    assert (config["model"]["init_args"]["frame_masks"] is not None) == ("i2v" in name)
    assert ("LoRA" in callbacks) == lora and ("EMA" in callbacks) == (not lora)
    if lora:
        apply_lora(model, callbacks["LoRA"]["rank"], callbacks["LoRA"]["alpha"])
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable <= 0.05 * expected


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """What the tiny recipes read, under one folder: shapes clips encoded with a tiny T5 (cached
    embeddings, pixels as latents), a random tiny Wan diffusers folder and a tiny STDiT3 checkpoint."""
    from lvdm.curation.encode import encode_shards
    from lvdm.models.diffusers_adapter import build_wan
    from lvdm.shapes.synthetic import ALL_COMBOS, caption, write_synthetic_dataset
    from lvdm.text import T5TextEncoder
    from lvdm.text.tiny import build_tiny_t5

    root = tmp_path_factory.mktemp("finetune")
    write_synthetic_dataset(str(root / "data/shapes"), num_train=8, num_val=2, shard_size=8, num_frames=4, size=24)
    build_tiny_t5(root / "runs/tiny_t5", [caption(*c) for c in ALL_COMBOS], d_model=16)
    for split in ("train", "val"):
        encode_shards(str(root / f"data/shapes/{split}-*.tar"), str(root / "data/tiny_latents"), num_frames=4,
                      resolution=24, dtype="float32", text_encoder=T5TextEncoder(str(root / "runs/tiny_t5"), max_length=8))
    recipes = {name: yaml.safe_load((FINETUNE / "tiny" / f"{name}.yaml").read_text()) for name in ("wan_t2v_lora", "opensora_lora")}
    torch.manual_seed(0)
    wan = build_wan(**recipes["wan_t2v_lora"]["model"]["init_args"]["denoiser"]["init_args"])
    with torch.no_grad():
        for p in wan.parameters():
            p.normal_(0, 0.1)  # a base whose zeroed output layers carry something
    wan.transformer.save_pretrained(root / "runs/tiny_wan")
    from lvdm.models.presets import preset

    stdit = preset(**recipes["opensora_lora"]["model"]["init_args"]["denoiser"]["init_args"])
    torch.save({"state_dict": {f"denoiser.{k}": v for k, v in stdit.state_dict().items()}}, root / "runs/tiny_opensora.ckpt")
    return root


class _Steps:
    """Patches ``LatentDiffusionModule.training_step``: records each step's loss by global step in
    ``losses`` (a fresh dict per run: :meth:`run`), and dies at ``crash_step`` (an exception: no
    checkpoint is written on the way out)."""

    def __init__(self, monkeypatch):
        self.losses: dict[int, float] = {}
        self.crash_step: int | None = None
        step = LatentDiffusionModule.training_step

        def recorded(module, batch, batch_idx):
            if module.trainer.global_step == self.crash_step:
                raise RuntimeError("killed")
            loss = step(module, batch, batch_idx)
            self.losses[module.trainer.global_step] = loss.item()
            return loss

        monkeypatch.setattr(LatentDiffusionModule, "training_step", recorded)

    def run(self, args: list[str], crash_step: int | None = None) -> dict[int, float]:
        self.losses, self.crash_step = {}, crash_step
        lightning_cli(["fit", *args])
        return self.losses


@pytest.mark.parametrize("name", _slow_but("wan_t2v_lora", ["wan_t2v_lora", "wan_i2v_lora", "wan_full", "opensora_lora"]))
def test_tiny_recipe_trains_through_the_cli(name, tiny_world, monkeypatch):
    monkeypatch.chdir(tiny_world)
    steps = _Steps(monkeypatch)
    cli = lightning_cli(["fit", "--config", str(FINETUNE / "tiny" / f"{name}.yaml")])
    losses = steps.losses
    assert cli.trainer.global_step == 4 and sorted(losses) == [0, 1, 2, 3]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    state = torch.load(Path(cli.trainer.default_root_dir) / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert all(is_adapter_key(k) for k in state) == ("lora" in name)
    if "lora" in name:
        lora = next(c for c in cli.trainer.callbacks if type(c).__name__ == "LoRA")
        assert lora.base[0]["source"].endswith(("tiny_wan", "tiny_opensora.ckpt"))  # recorded for sampling


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["torch.optim.AdamW", "lvdm.finetune.optim8bit.AdamW8bit"])
def test_a_killed_lora_run_resumes_with_ckpt_path_last_on_the_same_loss_curve(optimizer, tiny_world, monkeypatch):
    """4 steps straight against a run that dies in step 3 (its last.ckpt: the validation after
    step 2, mid-epoch) and is resumed with ``lvdm fit --ckpt_path last``: the same losses, bit for bit."""
    if "8bit" in optimizer:
        pytest.importorskip("bitsandbytes")
    monkeypatch.chdir(tiny_world)
    args = ["--config", str(FINETUNE / "tiny/wan_t2v_lora.yaml"), "--model.init_args.optimizer.class_path", optimizer]
    steps = _Steps(monkeypatch)
    straight = steps.run([*args, "--trainer.default_root_dir", f"runs/straight_{optimizer}"])
    assert sorted(straight) == [0, 1, 2, 3]
    killed = [*args, "--trainer.default_root_dir", f"runs/killed_{optimizer}"]
    with pytest.raises(RuntimeError, match="killed"):
        steps.run(killed, crash_step=3)
    assert sorted(steps.losses) == [0, 1, 2]
    assert torch.load(f"runs/killed_{optimizer}/checkpoints/last.ckpt", weights_only=True)["global_step"] == 2
    resumed = steps.run([*killed, "--ckpt_path", "last"])
    assert sorted(resumed) == [2, 3] and all(resumed[s] == straight[s] for s in resumed), (resumed, straight)
