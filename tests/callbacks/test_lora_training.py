"""The LoRA callback in real fits of the tiny module: adapter-only checkpoints that resume
exactly (optimizer, step, EMA of the adapter), load as a merged model, merge and export."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset

from lvdm.checkpoints.load import build_module, load_module
from lvdm.finetune.adapter_files import export, merge
from lvdm.finetune.lora import is_adapter_key, merge_lora
from lvdm.training.callbacks.ema import EMA
from lvdm.training.callbacks.lora_training import LoRA
from lvdm.training.callbacks.run_checkpoint import RunCheckpoint
from lvdm.training.callbacks.warm_start import InitFrom

ROOT = Path(__file__).resolve().parents[2]


class Clips(Dataset):
    """Four fixed random clips: two batches of two, so a fit of 2 steps ends an epoch."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"video": torch.rand(3, 2, 8, 8, generator=g) * 2 - 1, "caption": ["a red square", "a blue disc"][i % 2]}


class Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())


def _base_module(tiny_hparams):
    """The tiny module with a random (not zero-initialised) denoiser: the base to adapt."""
    torch.manual_seed(0)
    module = build_module(tiny_hparams())
    with torch.no_grad():
        for param in module.denoiser.parameters():
            param.normal_(0, 0.2)
    return module


def _fit(tmp_path, module, steps, callbacks, ckpt_path=None):
    losses = Losses()
    L.seed_everything(0)
    saves = any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=saves,
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[*callbacks, losses])
    trainer.fit(module, DataLoader(Clips(), batch_size=2), ckpt_path=ckpt_path)
    return trainer, losses.losses


def _adapter(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_adapter_only_checkpoint_resumes_exactly(tmp_path, tiny_hparams):
    """A 4-step run that checkpoints every step, against its step-2 checkpoint resumed for 2 more
    steps (what `--ckpt_path` after a kill does): the same losses, adapter and EMA, bit for bit."""
    lora = dict(rank=2, alpha=4.0, targets=None)
    straight, ema_straight = _base_module(tiny_hparams), EMA(decay=0.9)
    saves = RunCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, save_top_k=-1, filename="{step}")
    _, losses_straight = _fit(tmp_path / "a", straight, 4, [LoRA(**lora), ema_straight, saves])
    path = tmp_path / "ckpt" / "step=2.ckpt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["state_dict"] and all(is_adapter_key(k) for k in ckpt["state_dict"])  # no base key
    assert set(ckpt["callbacks"]["EMA"]["shadow"]) == set(ckpt["state_dict"])  # EMA of the adapter alone
    full = sum(v.numel() for v in straight.state_dict().values())
    assert sum(v.numel() for v in ckpt["state_dict"].values()) < 0.05 * full
    assert ckpt["callbacks"]["LoRA"]["rank"] == 2 and ckpt["callbacks"]["LoRA"]["base"] == []

    resumed = _base_module(tiny_hparams)  # the same base, built again; a fresh adapter, replaced by the checkpoint's
    ema_resumed = EMA(decay=0.9)
    _, losses_rest = _fit(tmp_path / "b", resumed, 4, [LoRA(**lora), ema_resumed], ckpt_path=str(path))
    assert len(losses_rest) == 2
    assert torch.equal(torch.stack(losses_rest), torch.stack(losses_straight[2:]))
    a, b = _adapter(straight), _adapter(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(ema_straight.shadow[k], ema_resumed.shadow[k]) for k in a)
    assert ema_resumed.num_updates == 4


def test_resume_refuses_other_lora_settings_and_a_full_checkpoint(tmp_path, tiny_hparams):
    trainer, _ = _fit(tmp_path, _base_module(tiny_hparams), 1, [LoRA(rank=2)])
    trainer.save_checkpoint(tmp_path / "adapter.ckpt")
    with pytest.raises(ValueError, match=r"LoRA settings differ.*alpha 2.0 vs 3.0"):
        _fit(tmp_path, _base_module(tiny_hparams), 2, [LoRA(rank=2, alpha=3.0)], ckpt_path=str(tmp_path / "adapter.ckpt"))
    with pytest.raises(KeyError, match=r"LoRA adapter keys do not match.*unexpected \[.denoiser.blocks.0.attns.0.proj"):
        _fit(tmp_path, _base_module(tiny_hparams), 2, [LoRA(rank=2, targets="blocks.*.attns.*.qkv")],
             ckpt_path=str(tmp_path / "adapter.ckpt"))
    with pytest.raises(RuntimeError, match="size mismatch for denoiser.blocks.0.attns.0.qkv.lora_A"):  # torch's own words
        _fit(tmp_path, _base_module(tiny_hparams), 2, [LoRA(rank=4)], ckpt_path=str(tmp_path / "adapter.ckpt"))
    other_base = _base_module(tiny_hparams)
    with torch.no_grad():
        other_base.denoiser.blocks[0].mlp.fc1.weight.add_(0.01)
    with pytest.raises(ValueError, match=r"this run's base weights \(fingerprint \w+\) differ from those the checkpoint's"):
        _fit(tmp_path, other_base, 2, [LoRA(rank=2)], ckpt_path=str(tmp_path / "adapter.ckpt"))
    plain, _ = _fit(tmp_path, _base_module(tiny_hparams), 1, [])
    plain.save_checkpoint(tmp_path / "full.ckpt")
    with pytest.raises(KeyError, match="LoRA adapter keys do not match.*missing"):
        _fit(tmp_path, _base_module(tiny_hparams), 2, [LoRA(rank=2)], ckpt_path=str(tmp_path / "full.ckpt"))


def _save_base(tmp_path, tiny_hparams):
    base = _base_module(tiny_hparams)
    path = tmp_path / "base.ckpt"
    torch.save({"state_dict": base.state_dict(), "hyper_parameters": tiny_hparams(), "global_step": 10}, path)
    return path


def _outputs(module):
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 3, 2, 8, 8, generator=g), torch.rand(2, generator=g)
    ctx, mask = module.encode_text(["a red square", "a blue disc"])
    with torch.no_grad():
        return module.eval().denoiser(x, t, ctx, mask)


def test_adapter_checkpoint_loads_merged_and_merge_writes_a_file_lvdm_reads(tmp_path, tiny_hparams, assert_close_scaled):
    base_path = _save_base(tmp_path, tiny_hparams)
    module = build_module(tiny_hparams())  # its own random base is replaced by InitFrom's
    module.hparams.update(tiny_hparams())  # what the CLI stores: the recipe (built from Python it holds plain values only)
    ema = EMA(decay=0.5)
    trainer, _ = _fit(tmp_path, module, 3, [LoRA(rank=2, alpha=3.0), ema,
                                             InitFrom(str(base_path), module="", prefix="", strict=True)])
    adapter_path = tmp_path / "adapter.ckpt"
    trainer.save_checkpoint(adapter_path)
    unmerged = _outputs(module)
    with ema.averaged_weights(module):
        unmerged_ema = _outputs(module)
    loaded = load_module(adapter_path)  # auto: the adapter's EMA
    assert loaded.weights == "ema"
    assert_close_scaled(_outputs(loaded.module), unmerged_ema, rtol=1e-6)

    loaded = load_module(adapter_path, weights="raw")  # the base from the recorded InitFrom source
    assert "LoRA merged into" in loaded.source and loaded.global_step == 3
    assert not any(is_adapter_key(k) for k in loaded.module.state_dict())
    assert_close_scaled(_outputs(loaded.module), unmerged, rtol=1e-6)
    assert (_outputs(load_module(base_path).module) - unmerged).abs().max() > 1e-4  # the adapter trained

    base_path.rename(tmp_path / "moved.ckpt")  # the recorded base is gone: a clear error, and --base gives it
    with pytest.raises(FileNotFoundError, match=r"its base '.*base.ckpt' \(the run's InitFrom source\) is not a local"):
        load_module(adapter_path)
    changed = torch.load(tmp_path / "moved.ckpt", weights_only=True)  # the base run went on and rewrote its file
    changed["state_dict"]["denoiser.blocks.0.mlp.fc1.weight"] += 0.01
    torch.save(changed, base_path)
    with pytest.raises(ValueError, match="base weights loaded .fingerprint .*differ from those its LoRA adapter was trained on"):
        load_module(adapter_path)
    with pytest.warns(UserWarning, match="merging into the given base"):  # a base given on purpose: merged anyway
        merge(str(adapter_path), str(tmp_path / "other.safetensors"), base=str(base_path))
    merged = merge(str(adapter_path), str(tmp_path / "merged.safetensors"), base=str(tmp_path / "moved.ckpt"), weights="raw")
    assert_close_scaled(_outputs(load_module(merged).module), unmerged, rtol=1e-6)


def test_an_adapter_without_a_recorded_base_needs_one(tmp_path, tiny_hparams):
    module = build_module(tiny_hparams())
    module.hparams.update(tiny_hparams())
    trainer, _ = _fit(tmp_path, module, 1, [LoRA(rank=2)])
    trainer.save_checkpoint(tmp_path / "adapter.ckpt")
    with pytest.raises(ValueError, match=r"recipe's own initialisation.*lvdm lora merge --base"):
        load_module(tmp_path / "adapter.ckpt")


def test_diffusers_export_keys_and_metadata(tmp_path, tiny_hparams):
    module = _base_module(tiny_hparams)
    trainer, _ = _fit(tmp_path, module, 2, [LoRA(rank=2, alpha=5.0, targets=["blocks.*.attns.*.qkv", "blocks.*.mlp.fc1"])])
    trainer.save_checkpoint(tmp_path / "adapter.ckpt")
    out = export(str(tmp_path / "adapter.ckpt"), str(tmp_path / "lora.safetensors"), format="diffusers", weights="raw")
    with safe_open(out, framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        qkv_a = f.get_tensor("transformer.blocks.0.attns.0.qkv.lora_A.weight")
    assert keys == {f"transformer.blocks.0.{m}.lora_{ab}.weight" for m in ("attns.0.qkv", "mlp.fc1") for ab in "AB"}
    assert meta["rank"] == "2" and meta["alpha"] == "5.0"
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["transformer.r"] == 2 and config["transformer.lora_alpha"] == 5.0
    assert config["transformer.target_modules"] == ["blocks.0.attns.0.qkv", "blocks.0.mlp.fc1"]
    assert torch.equal(qkv_a, module.denoiser.blocks[0].attns[0].qkv.lora_A["default"].weight)
    with pytest.raises(ValueError, match="holds no LoRA adapter"):
        plain, _ = _fit(tmp_path / "plain", _base_module(tiny_hparams), 1, [])
        plain.save_checkpoint(tmp_path / "plain.ckpt")
        export(str(tmp_path / "plain.ckpt"), str(tmp_path / "x.safetensors"))
    merge_lora(module)  # the module trained on is a plain model again


def test_a_lora_file_starts_a_new_lora_run_and_lvdm_sample_merges_one(tmp_path, tiny_hparams, monkeypatch,
                                                                     assert_close_scaled):
    """Continued training: LoRA(from_file=...) starts its adapter (rank 2, another alpha) at an exported
    file's update; sampling: `lvdm sample --lora FILE --lora_scale S` merges it into the base checkpoint."""
    from types import SimpleNamespace

    from lvdm.cli import main
    from lvdm.generation.generator import Generator

    base_path = _save_base(tmp_path, tiny_hparams)
    module = _base_module(tiny_hparams)
    trainer, _ = _fit(tmp_path, module, 2, [LoRA(rank=2, alpha=5.0)])
    trainer.save_checkpoint(tmp_path / "adapter.ckpt")
    lora = export(str(tmp_path / "adapter.ckpt"), str(tmp_path / "lora.safetensors"), weights="raw")
    trained = _outputs(module)
    continued = _base_module(tiny_hparams)
    callback = LoRA(rank=2, alpha=1.0, from_file=lora)
    callback.setup(SimpleNamespace(callbacks=[callback]), continued, "fit")
    assert_close_scaled(_outputs(continued), trained, rtol=1e-6)
    assert callback.state_dict()["from_file"] == lora
    assert_close_scaled(_outputs(Generator(str(base_path), device="cpu", lora=lora).module), trained, rtol=1e-6)
    with pytest.raises(ValueError, match="has rank 2, this run's LoRA rank is 4"):
        other = LoRA(rank=4, from_file=lora)
        other.setup(SimpleNamespace(callbacks=[other]), _base_module(tiny_hparams), "fit")
    monkeypatch.chdir(tmp_path)
    main(["sample", "--checkpoint", str(base_path), "--prompts", '["a red square moving left"]', "--out", "videos",
          "--steps", "1", "--lora", lora, "--lora_scale", "0.5"])
    assert len(list(Path("videos").glob("*.mp4"))) == 1


def test_tiny_lora_recipe_through_the_cli_then_sample_merge_and_export(tmp_path, monkeypatch, assert_close_scaled):
    """recipes/tiny/lora.yaml after the base recipe, as a user runs them (relative paths, from the
    run folder): the base run, the LoRA run from its last.ckpt, then the adapter checkpoint
    loads merged (what `lvdm sample` reads), `lvdm lora merge` writes a file lvdm loads, and
    `lvdm lora export` writes the diffusers layout."""
    from lvdm.cli import lightning_cli, main
    from lvdm.shapes.synthetic import write_synthetic_dataset

    monkeypatch.chdir(tmp_path)
    write_synthetic_dataset("data/shapes", num_train=8, num_val=2, shard_size=8, num_frames=8, size=32)
    small = ["--model.init_args.denoiser.init_args.hidden_size", "32", "--model.init_args.denoiser.init_args.depth", "1",
             "--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "4", "--trainer.max_steps", "2",
             "--trainer.limit_val_batches", "0", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    for recipe in ("cross_attn", "lora"):
        cli = lightning_cli(["--config", str(ROOT / f"recipes/tiny/{recipe}.yaml")] + small, run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    adapter = tmp_path / "runs/tiny_lora/checkpoints/last.ckpt"
    ckpt = torch.load(adapter, weights_only=True)
    assert all(is_adapter_key(k) for k in ckpt["state_dict"])
    assert ckpt["callbacks"]["LoRA"]["base"][0]["source"] == str(tmp_path / "runs/tiny_cross_attn/checkpoints/last.ckpt")
    unmerged = _outputs(cli.model)
    assert_close_scaled(_outputs(load_module(adapter).module), unmerged, rtol=1e-6)
    main(["lora", "merge", "--adapter", str(adapter), "--out", "merged.safetensors"])
    assert_close_scaled(_outputs(load_module("merged.safetensors").module), unmerged, rtol=1e-6)
    for name, checkpoint in (("adapter", str(adapter)), ("merged", "merged.safetensors")):  # lvdm sample reads both
        main(["sample", "--checkpoint", checkpoint, "--prompts", '["a red square moving left"]', "--out", name,
              "--steps", "1"])
        assert len(list(Path(name).glob("*.mp4"))) == 1
    main(["lora", "export", "--checkpoint", str(adapter), "--out", "lora.safetensors", "--format", "diffusers"])
    with safe_open("lora.safetensors", framework="pt") as f:
        assert all(k.startswith("transformer.blocks.") for k in f.keys()) and f.metadata()["rank"] == "4"


def test_the_base_is_loaded_before_the_adapter_in_every_stage(tmp_path, tiny_hparams):
    """``lvdm validate`` of an adapter checkpoint: InitFrom alone skips stages other than fit, but an
    adapter-only checkpoint has no base, so the LoRA callback has it loaded there too, before wrapping."""
    from types import SimpleNamespace

    base_path = _save_base(tmp_path, tiny_hparams)
    want = torch.load(base_path, weights_only=True)["state_dict"]
    module = build_module(tiny_hparams())
    init, lora = InitFrom(str(base_path), module="", prefix="", strict=True), LoRA(rank=2)
    deepspeed = SimpleNamespace(exclude_frozen_parameters=False)  # DeepSpeedStrategy's switch
    lora.setup(SimpleNamespace(callbacks=[lora, init], strategy=deepspeed), module, "validate")  # InitFrom runs first
    assert deepspeed.exclude_frozen_parameters  # DeepSpeed's module files hold the adapter only too
    assert init.report is not None and not init.report.new
    lora.on_load_checkpoint(None, module, {"global_step": 2})  # DeepSpeed's client state: it loads its module files itself
    merge_lora(module.denoiser)
    assert all(torch.equal(module.state_dict()[k], v) for k, v in want.items())  # B = 0: the merged model is the base
    assert lora.state_dict()["base"][0]["source"] == str(base_path.resolve())


def test_a_frozen_text_encoder_is_refused(tiny_hparams):
    from types import SimpleNamespace

    module = build_module(tiny_hparams())
    module.text_encoder.__class__ = type("FrozenWords", (type(module.text_encoder),), {"trainable": False})
    with pytest.raises(ValueError, match="LoRA module 'text_encoder': FrozenWords runs frozen"):
        LoRA(rank=2, module="text_encoder", targets="*").setup(SimpleNamespace(callbacks=[]), module, "fit")
