"""The low-memory path of LoRA fine-tuning: a frozen base stored in FP8 (lvdm.finetune.fp8) and
block swap of the frozen base (lvdm.finetune.block_swap), on the tiny DiT."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from test_lora import _inputs  # the tiny DiT's inputs (tests/finetune/test_lora.py)
from torch import nn

from lvdm.checkpoints.load import build_module
from lvdm.distributed.activation_checkpointing import apply_activation_checkpointing
from lvdm.finetune.block_swap import enable_block_swap
from lvdm.finetune.fp8 import Fp8Linear, store_frozen_fp8, stored_bytes
from lvdm.finetune.lora import apply_lora, is_adapter_key, lora_layers

BENCH = Path(__file__).parents[2] / "benchmarks" / "bench_fp8_base.py"


def _denoiser(tiny_hparams, depth=1):
    torch.manual_seed(0)
    hparams = tiny_hparams()
    hparams["denoiser"]["init_args"]["depth"] = depth
    model = build_module(hparams).denoiser
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    return model


def _lora(tiny_hparams, depth=1):
    model = _denoiser(tiny_hparams, depth)
    apply_lora(model, rank=2)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(0, 0.3)
    return model


def test_fp8_base_takes_about_half_the_bytes_of_bf16_and_stays_close(tiny_hparams, assert_close_scaled):
    reference = _lora(tiny_hparams).to(torch.bfloat16)
    model = copy.deepcopy(reference)
    linears = {n: m for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and not m.weight.requires_grad and n.startswith("blocks.")}
    bf16_bytes = sum(stored_bytes(m) for m in linears.values())
    names = store_frozen_fp8(model)
    assert sorted(names) == sorted(linears)  # the blocks' frozen linears, adapted bases and the rest (adaLN); no adapter, no embedder
    fp8 = [model.get_submodule(n) for n in names]
    assert all(isinstance(m, Fp8Linear) and m.weight.dtype == torch.float8_e4m3fn for m in fp8)
    ratio = sum(stored_bytes(m) for m in fp8) / bf16_bytes
    assert ratio <= 0.55, ratio  # measured 0.52 (1 byte + a float32 scale a tensor vs 2 bytes, biases in bf16)
    inputs = [t.to(torch.bfloat16) if t.is_floating_point() else t for t in _inputs()]
    with torch.no_grad():
        expected, got = reference(*inputs).float(), model(*inputs).float()
    assert_close_scaled(got, expected, rtol=0.1)  # measured: max |diff| / max |bf16 output| ≈ 0.03
    model(*inputs).float().square().mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and grads == {n for n, p in model.named_parameters() if is_adapter_key(n)}  # the adapters train


def test_fp8_state_dict_keeps_fp8_moves_keep_fp8_and_a_float_checkpoint_loads(tiny_hparams):
    model = _lora(tiny_hparams)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    store_frozen_fp8(model, targets=["blocks.*.mlp.fc1"])
    layer = model.get_submodule("blocks.0.mlp.fc1.base_layer")
    state = model.state_dict()
    assert state["blocks.0.mlp.fc1.base_layer.weight"].dtype == torch.float8_e4m3fn
    assert state["blocks.0.mlp.fc1.base_layer.weight_scale"].dtype == torch.float32
    model.to(torch.bfloat16)  # Lightning's bf16-true precision: casts the bias, not the stored weight and scale
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
    assert layer.bias.dtype == torch.bfloat16
    model.load_state_dict(state)  # fp8 + scale: copied exactly
    assert torch.equal(layer.weight.view(torch.uint8), state["blocks.0.mlp.fc1.base_layer.weight"].view(torch.uint8))
    model.float().load_state_dict(full)  # a float32 checkpoint: quantised on load
    dequantized = layer.dequantized(torch.float32)
    assert torch.equal(layer.weight.view(torch.uint8), state["blocks.0.mlp.fc1.base_layer.weight"].view(torch.uint8))
    weight = full["blocks.0.mlp.fc1.base_layer.weight"]
    assert (dequantized - weight).abs().max() <= 0.07 * weight.abs().max()  # e4m3: 3 mantissa bits, ≤ 1/16 relative


def test_fp8_on_a_trainable_linear_or_an_unknown_name_is_one_clear_line(tiny_hparams):
    model = _lora(tiny_hparams)
    with pytest.raises(ValueError, match=r"frozen linears only; blocks\.0\.mlp\.fc1\.lora_A\.default") as err:
        store_frozen_fp8(model, targets=["blocks.*.mlp.fc1.lora_A.*"])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"fp8 targets \['nope\.\*'\] match no nn.Linear of DiT; available: "):
        store_frozen_fp8(model, targets="nope.*")


def _swap_grads(model, swap_count, whole_model_checkpoint=False):
    swap = enable_block_swap(model, swap_count, "cpu", record=True) if swap_count else None
    if whole_model_checkpoint:  # recomputes every block (through its hooks) at the start of the backward
        output = torch.utils.checkpoint.checkpoint(model, *_inputs(), use_reentrant=False)
    else:
        output = model(*_inputs())
    output.square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, swap


class _Wrapped(nn.Module):
    """Checkpoints a block's call (hooks included), as torch's ``checkpoint_wrapper`` does, and
    recomputes the whole block (no early stop): its forward hook fires inside its backward."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, *args):
        with torch.utils.checkpoint.set_checkpoint_early_stop(False):
            return torch.utils.checkpoint.checkpoint(self.block, *args, use_reentrant=False)


FORWARD = [("load", 0), ("drop", 0), ("load", 1), ("drop", 1), ("load", 2), ("drop", 2)]


@pytest.mark.parametrize("checkpointing", ["none", "blocks", "model", "wrapped"])
def test_block_swap_gradients_equal_no_swap_bit_for_bit_and_the_hooks_fire_in_order(tiny_hparams, checkpointing):
    plain = _lora(tiny_hparams, depth=3)
    swapped = copy.deepcopy(plain)
    if checkpointing == "blocks":  # lvdm's ActivationCheckpointing: recomputes inside each block's backward
        apply_activation_checkpointing(plain)
        apply_activation_checkpointing(swapped)
    if checkpointing == "wrapped":  # recomputes each block through its hooks inside its backward: no drop then
        for model in (plain, swapped):
            model.blocks = nn.ModuleList(_Wrapped(block) for block in model.blocks)
    expected, _ = _swap_grads(plain, 0, checkpointing == "model")
    got, swap = _swap_grads(swapped, 3, checkpointing == "model")
    assert expected and set(got) == set(expected) and all(torch.equal(got[n], expected[n]) for n in expected)
    backward = [("load", 2), ("load", 1), ("drop", 2), ("load", 0),  # last block first, each loaded for its backward
                ("drop", 1), ("drop", 0)]  # the end of the backward
    assert swap.events == FORWARD * (2 if checkpointing == "model" else 1) + backward
    assert not swap.loaded and not swap.backward
    adapters = {n for n, p in swapped.named_parameters() if p.requires_grad}
    moved = {f"blocks.{i}.{n}" for i in range(3) for n in swap.frozen(i)}
    assert moved and not moved & adapters  # only the frozen base moves


def test_block_swap_more_blocks_than_the_model_has_is_one_clear_line(tiny_hparams):
    with pytest.raises(ValueError, match=r"^block_swap 4 must be between 0 and the 3 blocks \(DiTBlock\) of DiT$"):
        enable_block_swap(_lora(tiny_hparams, depth=3), 4, "cpu")


def test_fp8_base_training_benchmark_losses_stay_within_2_percent_of_bf16():
    spec = importlib.util.spec_from_file_location("bench_fp8_base", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.compare(steps=3)
    assert len(rows) == 3 and all(abs(fp8 - bf16) <= 0.02 * abs(bf16) for _, bf16, fp8 in rows)


class _Clips(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"video": torch.rand(3, 2, 8, 8, generator=g) * 2 - 1, "caption": ["a red square", "a blue disc"][i % 2]}


def _fit(tiny_hparams, tmp_path, **options):
    import lightning as L

    from lvdm.training.callbacks.lora_training import LoRA

    torch.manual_seed(0)
    module = build_module(tiny_hparams())
    lora, losses = LoRA(rank=2, **options), []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].item())

    L.seed_everything(0)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[lora, Losses()])
    trainer.fit(module, torch.utils.data.DataLoader(_Clips(), batch_size=2))
    return module, lora, losses


def test_lora_callback_options_store_the_base_in_fp8_and_swap_blocks(tiny_hparams, tmp_path):
    _, _, plain = _fit(tiny_hparams, tmp_path / "a")
    module, lora, losses = _fit(tiny_hparams, tmp_path / "b", fp8_base=True, block_swap=1)
    assert isinstance(module.denoiser.get_submodule("blocks.0.mlp.fc1.base_layer"), Fp8Linear)
    assert lora.swap is not None and len(lora.swap.blocks) == 1 and not lora.swap.loaded
    assert losses == pytest.approx(plain, rel=0.02)
    with pytest.raises(ValueError, match=r"^block_swap 2 must be between 0 and the 1 blocks \(DiTBlock\) of DiT$"):
        _fit(tiny_hparams, tmp_path / "c", block_swap=2)
