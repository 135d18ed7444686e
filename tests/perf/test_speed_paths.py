"""Speed paths: per-block compile wiring, host-sync-free transfers, and (on a GPU) a training
step and a sampling step that never wait for the device."""

import pytest
import torch

from lvdm.diffusion.guidance import GuidedDenoiser
from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.dit import DiT
from lvdm.models.embeddings import sincos_pos_embed_3d
from lvdm.training.module import LatentDiffusionModule
from lvdm.distributed.compile import compile_blocks
from lvdm.text.words import WordTextEncoder
from lvdm.utils import to_device_async


def _dit():
    torch.manual_seed(0)
    return DiT(in_channels=4, hidden_size=32, depth=3, num_heads=2, patch_size=(1, 2, 2),
               conditioning="cross_attn", layout="spatial_temporal", context_dim=16)


def test_compile_blocks_compiles_each_block_and_keeps_outputs():
    model = _dit()
    for block in model.blocks:  # give the blocks non-trivial outputs
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.1)
    x, t, ctx = torch.randn(2, 4, 2, 4, 4), torch.rand(2), torch.randn(2, 5, 16)
    eager = model(x, t, ctx)
    assert compile_blocks(model, backend="eager") == 3
    torch.testing.assert_close(model(x, t, ctx), eager)
    with pytest.raises(ValueError, match="no block_class"):
        compile_blocks(torch.nn.Linear(2, 2))


def test_position_code_is_cached_per_device_and_transfers_are_plain_on_cpu():
    a = sincos_pos_embed_3d(32, (2, 4, 4), device=torch.device("cpu"))
    assert a is sincos_pos_embed_3d(32, (2, 4, 4))  # cached: no rebuild per forward
    ids = torch.arange(4)
    assert to_device_async(ids, torch.device("cpu")) is ids


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_and_sampling_steps_do_not_sync_the_host():
    module = LatentDiffusionModule(_dit(), WordTextEncoder(dim=16, max_length=8)).cuda().train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    batch = {"latent": torch.randn(2, 4, 2, 4, 4, device="cuda"), "caption": ["a red square", "a blue circle"]}
    flow = RectifiedFlow(num_sampling_steps=2)

    def steps():
        module.diffusion_loss(batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ctx, mask = module.encode_text(batch["caption"])
        null, null_mask = module.encode_text([""])
        with torch.no_grad():
            flow.sample(GuidedDenoiser(module.denoiser, ctx, mask, null, null_mask, 4.0), batch["latent"], 2)

    steps()  # warm-up: caches, allocator, position codes
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        steps()
    finally:
        torch.cuda.set_sync_debug_mode(0)
