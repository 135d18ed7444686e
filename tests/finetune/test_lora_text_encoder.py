"""LoRA on the text encoder too (the LoRA callback's ``text_encoder_targets``), on a tiny random
T5: the pretrained encoder trains through its adapter alone, the adapter-only checkpoint holds
both adapters and resumes exactly, `lvdm lora merge` folds both in; cached text embeddings are refused."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lvdm.checkpoints.load import build_module, load_module
from lvdm.finetune.adapter_files import export, merge
from lvdm.finetune.lora import is_adapter_key
from lvdm.text.tiny import build_tiny_t5
from lvdm.training.callbacks.ema import EMA
from lvdm.training.callbacks.lora_training import LoRA
from lvdm.training.callbacks.run_checkpoint import RunCheckpoint
from lvdm.training.callbacks.warm_start import InitFrom

CAPTIONS = ["a red square", "a blue disc", "a green star moving left"]
T5_QV = "model.encoder.block.*.layer.0.SelfAttention.[qv]"


class Clips(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"video": torch.rand(3, 2, 8, 8, generator=g) * 2 - 1, "caption": CAPTIONS[i % 3]}


class Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())


@pytest.fixture(scope="module")
def t5_base(tmp_path_factory, tiny_hparams):
    """A tiny random T5 folder, the recipe using it, and a base checkpoint of the whole module."""
    root = tmp_path_factory.mktemp("t5_lora")
    t5 = build_tiny_t5(root / "t5", CAPTIONS, d_model=16)
    hparams = tiny_hparams(text_encoder={"class_path": "lvdm.text.t5.T5TextEncoder",
                                         "init_args": {"pretrained": str(t5), "max_length": 8}})
    torch.manual_seed(0)
    base = build_module(hparams)
    with torch.no_grad():
        for param in base.denoiser.parameters():
            param.normal_(0, 0.2)
    torch.save({"state_dict": base.state_dict(), "hyper_parameters": hparams}, root / "base.ckpt")
    return hparams, root / "base.ckpt"


def _fit(root, hparams, base, steps, callbacks, ckpt_path=None):
    module = build_module(hparams)
    module.hparams.update(hparams)
    losses = Losses()
    L.seed_everything(0)
    callbacks = [InitFrom(str(base), module="", prefix="", strict=True), *callbacks, losses]
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, default_root_dir=root,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                        enable_checkpointing=any(isinstance(c, RunCheckpoint) for c in callbacks))
    trainer.fit(module, DataLoader(Clips(), batch_size=2), ckpt_path=ckpt_path)
    return module, torch.stack(losses.losses)


def _lora():
    return LoRA(rank=2, alpha=4.0, text_encoder_targets=T5_QV, text_encoder_rank=3)


def _outputs(module):
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(3, 3, 2, 8, 8, generator=g), torch.rand(3, generator=g)
    with torch.no_grad():
        ctx, mask = module.eval().encode_text(CAPTIONS)
        return ctx, module.denoiser(x, t, ctx, mask)


def test_text_encoder_adapter_trains_saves_resumes_and_merges(tmp_path, t5_base, assert_close_scaled):
    hparams, base = t5_base
    base_t5 = {k: v.clone() for k, v in build_module(hparams).text_encoder.state_dict().items()}
    saves = RunCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, save_top_k=-1, filename="{step}")
    ema = EMA(decay=0.9)
    straight, losses = _fit(tmp_path / "a", hparams, base, 4, [_lora(), ema, saves])
    te = dict(straight.text_encoder.named_parameters())
    trained = {n: p for n, p in te.items() if p.requires_grad}
    assert trained and all(is_adapter_key(n) for n in trained)
    adapted = [f"model.encoder.block.{b}.layer.0.SelfAttention.{m}" for b in (0, 1) for m in "qv"]
    assert {n.split(".lora_")[0] for n in trained} == set(adapted)
    assert te["model.encoder.block.0.layer.0.SelfAttention.q.lora_A.default.weight"].shape == (3, 16)
    assert all(p.abs().max() > 0 for n, p in trained.items() if ".lora_B." in n)  # gradients reached them
    for key, value in base_t5.items():  # the T5 itself stays as it was
        key = key.replace("SelfAttention.q.", "SelfAttention.q.base_layer.").replace("SelfAttention.v.", "SelfAttention.v.base_layer.")
        assert torch.equal(straight.text_encoder.state_dict()[key], value), key

    ckpt = torch.load(tmp_path / "ckpt" / "step=2.ckpt", weights_only=True)
    assert all(is_adapter_key(k) for k in ckpt["state_dict"])
    assert sum(k.startswith("text_encoder.") for k in ckpt["state_dict"]) == 8  # 4 linears × A, B
    assert set(ckpt["callbacks"]["EMA"]["shadow"]) == set(ckpt["state_dict"])  # EMA of both adapters
    assert ckpt["callbacks"]["LoRA"]["text_encoder"] == {"rank": 3, "alpha": 3.0, "targets": adapted}

    resumed, rest = _fit(tmp_path / "b", hparams, base, 4, [_lora(), EMA(decay=0.9)],
                         ckpt_path=str(tmp_path / "ckpt" / "step=2.ckpt"))
    assert torch.equal(rest, losses[2:])
    a, b = ({n: p for n, p in m.named_parameters() if p.requires_grad} for m in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    last = tmp_path / "ckpt" / "step=4.ckpt"
    ctx, out = _outputs(straight)
    merged = load_module(merge(str(last), str(tmp_path / "merged.safetensors"), weights="raw")).module
    merged_ctx, merged_out = _outputs(merged)
    assert not any(is_adapter_key(k) for k in merged.state_dict())
    assert_close_scaled(merged_ctx, ctx, rtol=1e-6)
    assert_close_scaled(merged_out, out, rtol=1e-6)
    base_ctx, _ = _outputs(load_module(base).module)
    assert (base_ctx - ctx).abs().max() > 1e-4  # the text encoder's adapter changed its embeddings
    with pytest.raises(ValueError, match="adapts the text encoder too.*lvdm lora merge"):
        export(str(last), str(tmp_path / "lora.safetensors"))


def test_cached_text_embeddings_and_a_frozen_encoder_are_refused(t5_base, tiny_hparams):
    from types import SimpleNamespace

    hparams, _ = t5_base
    module, lora = build_module(hparams), _lora()
    lora.setup(SimpleNamespace(callbacks=[lora]), module, "fit")
    lora.on_train_batch_start(None, module, {"caption": CAPTIONS}, 0)  # captions: the encoder runs
    with pytest.raises(ValueError, match=r"text_encoder_targets: this batch holds cached text embeddings \('text'"):
        lora.on_train_batch_start(None, module, {"text": torch.zeros(1, 8, 16), "text_mask": torch.ones(1, 8)}, 0)
    with pytest.raises(ValueError, match="text_encoder_targets: this batch holds cached text embeddings"):
        lora.on_validation_batch_start(None, module, {"text": torch.zeros(1, 8, 16), "text_mask": torch.ones(1, 8)}, 0)
    words = build_module(tiny_hparams())
    words.text_encoder.__class__ = type("FrozenWords", (type(words.text_encoder),), {"trainable": False})
    with pytest.raises(ValueError, match="text_encoder_targets: FrozenWords runs frozen without gradients"):
        _lora().setup(SimpleNamespace(callbacks=[]), words, "fit")
    with pytest.raises(ValueError, match=r"match no nn.Linear of T5EncoderModel|match no nn.Linear of T5TextEncoder"):
        LoRA(rank=2, text_encoder_targets="blocks.*.q").setup(SimpleNamespace(callbacks=[]), build_module(hparams), "fit")
