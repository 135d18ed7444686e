"""lvdm.finetune.memory: the bytes predicted on a ``meta`` backbone equal those of a real
run's tensors (parameters by dtype, gradients, optimizer states, host copies of swapped
blocks) exactly, for LoRA, an FP8 base, block swap, full fine-tuning and the 8-bit optimizer;
and ``lvdm estimate --lora`` reports them."""

import pytest
import torch

from lvdm.checkpoints.load import build_module
from lvdm.finetune.block_swap import enable_block_swap
from lvdm.finetune.memory import fp8_dequantized_bytes, peak_bytes, prepare_finetune, state_bytes
from lvdm.perf.estimate import build_backbone, estimate


def _hparams(tiny_hparams):
    hparams = tiny_hparams()
    hparams["denoiser"]["init_args"].update(hidden_size=64, depth=2, num_heads=2)  # fc1 64×256: over 4096 values
    return hparams


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 3, 2, 8, 8, generator=g), torch.rand(2, generator=g), torch.randn(2, 4, 16, generator=g),
            torch.ones(2, 4, dtype=torch.bool))


def _by_dtype(tensors):
    out = {}
    for t in tensors:
        key = str(t.dtype).removeprefix("torch.")
        out[key] = out.get(key, 0) + t.numel() * t.element_size()
    return out


def _measured(model, optimizer, block_swap, weights_dtype):
    """One real training step; the bytes its tensors hold, counted from the tensors themselves."""
    swap = enable_block_swap(model, block_swap, "cpu") if block_swap else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(trainable, lr=1e-3)
    else:
        from lvdm.finetune.optim8bit import AdamW8bit
        opt = AdamW8bit(trainable, lr=1e-3)
    x, t, context, mask = _inputs()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[weights_dtype]
    model(x.to(dtype), t, context=context.to(dtype), context_mask=mask).float().square().mean().backward()
    opt.step()
    host = [tensor for block in (swap.host if swap else []) for tensor in block.values()]
    frozen = _by_dtype(p for p in model.parameters() if not p.requires_grad)
    for key, value in _by_dtype(host).items():  # what lives on the host is not on the device
        frozen[key] -= value
    states = {id(v): v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)}
    return {"frozen": {k: v for k, v in frozen.items() if v}, "host_swapped": sum(_by_dtype(host).values()),
            "trainable": sum(p.numel() * p.element_size() for p in trainable),
            "grads": sum(p.grad.numel() * p.grad.element_size() for p in trainable),
            "optimizer": sum(v.numel() * v.element_size() for v in states.values()),
            "buffers": sum(b.numel() * b.element_size() for b in model.buffers())}


CASES = [  # rank, fp8_base, block_swap, weights dtype
    (4, False, 0, "bf16"), (4, True, 1, "bf16"), (4, True, 2, "fp32"), (0, False, 0, "bf16"),
]


@pytest.mark.parametrize("rank,fp8_base,block_swap,weights_dtype", CASES)
def test_predicted_state_bytes_equal_a_real_runs_tensors(tiny_hparams, rank, fp8_base, block_swap, weights_dtype):
    hparams = _hparams(tiny_hparams)
    denoiser = hparams["denoiser"]
    predicted = state_bytes(prepare_finetune(build_backbone(denoiser["class_path"], denoiser["init_args"]), rank,
                                             fp8_base=fp8_base, weights_dtype=weights_dtype),
                            "adamw", block_swap)
    torch.manual_seed(0)
    real = prepare_finetune(build_module(hparams).denoiser, rank, fp8_base=fp8_base, weights_dtype=weights_dtype)
    measured = _measured(real, "adamw", block_swap, weights_dtype)
    assert {k: predicted[k] for k in measured} == measured
    assert ("float8_e4m3fn" in predicted["frozen"]) == (fp8_base and block_swap < 2) and (predicted["host_swapped"] > 0) == bool(block_swap)
    if rank == 0:  # a full fine-tune: nothing frozen, AdamW's two moments of the training dtype
        assert predicted["frozen"] == {} and predicted["optimizer"] == 2 * predicted["trainable"] + 4 * len(
            list(real.parameters()))


@pytest.mark.parametrize("rank", [4, 64, 0])  # adapters under 4096 values (float32 moments), over, and every weight
def test_predicted_8bit_optimizer_bytes_equal_bitsandbytes_states(tiny_hparams, rank):
    pytest.importorskip("bitsandbytes")
    hparams = _hparams(tiny_hparams)
    denoiser = hparams["denoiser"]
    predicted = state_bytes(prepare_finetune(build_backbone(denoiser["class_path"], denoiser["init_args"]), rank),
                            "adamw8bit")
    torch.manual_seed(0)
    measured = _measured(prepare_finetune(build_module(hparams).denoiser, rank), "adamw8bit", 0, "bf16")
    assert predicted["optimizer"] == measured["optimizer"]
    adamw = state_bytes(prepare_finetune(build_backbone(denoiser["class_path"], denoiser["init_args"]), rank))
    assert (predicted["optimizer"] < adamw["optimizer"]) == (rank != 4)  # bf16 moments of tiny tensors beat fp32 ones


def test_block_swap_and_fp8_copies_shrink_the_peak_only_under_checkpointing():
    states = {"frozen": {"bfloat16": 100}, "buffers": 0, "trainable": 10, "grads": 10, "optimizer": 20,
              "host_swapped": 400, "swap_window": 150}
    assert peak_bytes(states, 1000, 1.0, fp8_dequantized=(80, 30))["total"] == 100 + 150 + 40 + 30 + 1000
    assert peak_bytes(states, 1000, 0.0, fp8_dequantized=(80, 30))["total"] == 100 + 400 + 40 + 80 + 1000
    assert peak_bytes(states, 1000, checkpoint_fraction=0.5)["swapped_on_device"] == 400


def _saved(model, dtype=torch.bfloat16) -> int:
    """Bytes autograd saves in a forward, the model's own tensors left out."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x, t, context, mask = _inputs()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x.to(dtype), t, context=context.to(dtype), context_mask=mask)
    return sum(seen.values())


def test_an_fp8_base_keeps_its_dequantised_weights_for_the_backward_as_predicted(tiny_hparams):
    """Without checkpointing the bf16 copy of every FP8 weight whose linear's input needs a
    gradient is saved: the forward saves exactly the bytes predicted on meta more than over a
    bf16 base (the adaLN and caption key/value linears read no gradient-carrying input: not saved)."""
    hparams = _hparams(tiny_hparams)
    denoiser = hparams["denoiser"]
    meta = prepare_finetune(build_backbone(denoiser["class_path"], denoiser["init_args"]), 4, fp8_base=True)
    x, t, context, mask = (v.to("meta") for v in _inputs())
    predicted, block = fp8_dequantized_bytes(meta, (x.bfloat16(), t), dict(context=context.bfloat16(), context_mask=mask))
    torch.manual_seed(0)
    bf16 = prepare_finetune(build_module(hparams).denoiser, 4)
    torch.manual_seed(0)
    fp8 = prepare_finetune(build_module(hparams).denoiser, 4, fp8_base=True)
    every = 2 * sum(p.numel() for p in fp8.parameters() if p.dtype == torch.float8_e4m3fn)
    assert 0 < block < predicted < every  # two blocks; some FP8 linears keep no copy
    assert _saved(fp8) - _saved(bf16) == predicted


def test_estimate_reports_a_lora_fine_tune(capsys):
    """A DiT-B/2 (meta): rank 32 adapters, then an FP8 base, 4 of 12 blocks swapped, checkpointing."""
    with pytest.raises(ValueError, match="fp8_base and block_swap .* need LoRA"):
        estimate(fp8_base=True, print_report=False)
    common = dict(size="B/2", frames=16, height=256, width=256)
    plain = estimate(**common, lora=32, print_report=False)["finetune"]
    low = estimate(**common, lora=32, fp8_base=True, block_swap=4, checkpoint_fraction=1.0, optimizer="adamw",
                   print_report=True)["finetune"]
    out = capsys.readouterr().out
    assert "fine-tune on one GPU" in out and "float8_e4m3fn" in out and "host (swapped blocks)" in out
    assert low["states"]["trainable"] == plain["states"]["trainable"]  # the same adapters
    assert low["peak"]["frozen"] < 0.5 * plain["peak"]["frozen"]
    assert low["peak"]["activations"] < plain["peak"]["activations"] and low["peak"]["total"] < plain["peak"]["total"]
