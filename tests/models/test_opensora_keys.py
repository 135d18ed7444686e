"""Open-Sora STDiT (v1.0), STDiT3 (v1.2) and PixArt-α checkpoints map onto lvdm presets key
for key with equal shapes, at real size on the meta device.

The expected state dicts are written from Open-Sora's published source (v1.0.0 / v1.2.0:
``opensora/models/stdit/stdit.py``, ``stdit3.py``, ``layers/blocks.py``) and PixArt-α's."""


import numpy as np
import pytest
import torch

from lvdm.models.convert import opensora
from lvdm.models.presets import from_opensora, preset

D, HEADS, T5, MLP = 1152, 16, 4096, 4608


def _block(prefix: str, temporal_attn: bool = False, qk_norm: bool = False) -> dict:
    shapes = {
        "scale_shift_table": (6, D),
        "attn.qkv.weight": (3 * D, D), "attn.qkv.bias": (3 * D,),
        "attn.proj.weight": (D, D), "attn.proj.bias": (D,),
        "cross_attn.q_linear.weight": (D, D), "cross_attn.q_linear.bias": (D,),
        "cross_attn.kv_linear.weight": (2 * D, D), "cross_attn.kv_linear.bias": (2 * D,),
        "cross_attn.proj.weight": (D, D), "cross_attn.proj.bias": (D,),
        "mlp.fc1.weight": (MLP, D), "mlp.fc1.bias": (MLP,),
        "mlp.fc2.weight": (D, MLP), "mlp.fc2.bias": (D,),
    }
    if qk_norm:
        shapes.update({"attn.q_norm.weight": (D // HEADS,), "attn.k_norm.weight": (D // HEADS,)})
    if temporal_attn:
        shapes.update({"attn_temp.qkv.weight": (3 * D, D), "attn_temp.qkv.bias": (3 * D,),
                       "attn_temp.proj.weight": (D, D), "attn_temp.proj.bias": (D,)})
    return {f"{prefix}.{k}": v for k, v in shapes.items()}


def _common(tokens: int, patch_conv_2d: bool = False) -> dict:
    return {
        "x_embedder.proj.weight": (D, 4, 2, 2) if patch_conv_2d else (D, 4, 1, 2, 2), "x_embedder.proj.bias": (D,),
        "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
        "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
        "t_block.1.weight": (6 * D, D), "t_block.1.bias": (6 * D,),
        "y_embedder.y_proj.fc1.weight": (D, T5), "y_embedder.y_proj.fc1.bias": (D,),
        "y_embedder.y_proj.fc2.weight": (D, D), "y_embedder.y_proj.fc2.bias": (D,),
        "y_embedder.y_embedding": (tokens, T5),
        "final_layer.linear.weight": (2 * 2 * 8, D), "final_layer.linear.bias": (32,),
        "final_layer.scale_shift_table": (2, D),
    }


def stdit_v1_shapes() -> dict:
    """STDiT-XL/2 of OpenSora-v1-16x256x256.pth (input 16×32×32 latents)."""
    shapes = dict(_common(120), pos_embed=(1, 256, D), pos_embed_temporal=(1, 16, D))
    for i in range(28):
        shapes.update(_block(f"blocks.{i}", temporal_attn=True))
    return shapes


def stdit3_shapes() -> dict:
    """STDiT3-XL/2 of hpcai-tech/OpenSora-STDiT-v3 (qk_norm, fps embedder, RoPE, 300 tokens)."""
    shapes = dict(_common(300), **{"rope.freqs": (D // HEADS // 2,)})
    shapes.update({"fps_embedder.mlp.0.weight": (D, 256), "fps_embedder.mlp.0.bias": (D,),
                   "fps_embedder.mlp.2.weight": (D, D), "fps_embedder.mlp.2.bias": (D,)})
    for i in range(28):
        shapes.update(_block(f"spatial_blocks.{i}", qk_norm=True))
        shapes.update(_block(f"temporal_blocks.{i}", qk_norm=True))
    return shapes


def pixart_alpha_shapes(size: int) -> dict:
    """PixArt-XL-2-{size}.pth of the PixArt-α repository (Open-Sora 1.0's initialisation)."""
    grid = size // 8 // 2
    shapes = dict(_common(120, patch_conv_2d=True), pos_embed=(1, grid * grid, D))
    for i in range(28):
        shapes.update(_block(f"blocks.{i}"))
    if size == 1024:
        for name in ("csize_embedder", "ar_embedder"):
            shapes.update({f"{name}.mlp.0.weight": (D // 3, 256), f"{name}.mlp.0.bias": (D // 3,),
                           f"{name}.mlp.2.weight": (D // 3, D // 3), f"{name}.mlp.2.bias": (D // 3,)})
    return shapes


CASES = [
    ("opensora-v1.0-stdit-xl2", stdit_v1_shapes),
    ("opensora-v1.2-stdit3-xl2", stdit3_shapes),
    ("pixart-alpha-xl2-512", lambda: pixart_alpha_shapes(512)),
    ("pixart-alpha-xl2-1024", lambda: pixart_alpha_shapes(1024)),
]


@pytest.mark.parametrize("name,shapes", CASES, ids=[c[0] for c in CASES])
def test_every_published_key_maps_with_equal_shape(name, shapes):
    published = {k: torch.empty(s, device="meta") for k, s in shapes().items()}
    with torch.device("meta"):
        model = preset(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = {k: tuple(v.shape) for k, v in opensora.convert_state_dict(published).items()}
    assert converted == ours  # same keys, same shapes, nothing left over either way
    dropped = set(published) - {k for k in published if opensora.rename(k) in ours} - {"x_embedder.proj.weight"}
    assert dropped <= set(opensora.COMPUTED)


def test_preset_sizes():
    """STDiT-XL/2 v1.0 is Open-Sora's '724M' (≈ 724·2^20 parameters); STDiT3-XL/2 is '1.1B'."""
    with torch.device("meta"):
        v1 = sum(p.numel() for p in preset("opensora-v1.0-stdit-xl2").parameters())
        v3 = sum(p.numel() for p in preset("opensora-v1.2-stdit3-xl2").parameters())
    assert abs(v1 / 2**20 - 724) < 2
    assert abs(v3 / 2**30 - 1.1) < 0.05  # 1.21e9 = 1.12·2^30


def _opensora_sincos_2d(dim: int, grid: int, scale: float, base_size=None) -> np.ndarray:
    """Open-Sora / PixArt's numpy code, written out from its description: positions
    i / scale (· base / grid), w-coordinate code first, [sin | cos] halves, float64."""
    pos = np.arange(grid, dtype=np.float64) / scale
    if base_size:
        pos = pos * base_size / grid  # PixArt: i / (grid / base) / scale
    w, h = np.meshgrid(pos, pos)

    def code(d, p):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(p.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([code(dim // 2, w), code(dim // 2, h)], axis=1)[None]


def test_stored_fixed_codes_are_checked_and_dropped():
    with torch.device("meta"):  # the check reads the model's settings, not its weights
        model = preset("opensora-v1.0-stdit-xl2", depth=1)  # 256 px: space_scale 0.5
        wrong = preset("opensora-v1.0-stdit-xl2-512", depth=1)  # space_scale 1: another position range
        pixart = preset("pixart-alpha-xl2-512", depth=1)
        v3 = preset("opensora-v1.2-stdit3-xl2", depth=1)
    stored = {"pos_embed": torch.from_numpy(_opensora_sincos_2d(D, 16, 0.5)).float()}
    omega = 1.0 / 10000 ** (np.arange(D // 2, dtype=np.float64) / (D / 2.0))
    out = np.outer(np.arange(16.0), omega)
    stored["pos_embed_temporal"] = torch.from_numpy(np.concatenate([np.sin(out), np.cos(out)], 1)[None]).float()
    assert opensora.convert_state_dict(stored, model) == {}
    with pytest.raises(ValueError, match="'pos_embed'.*other position settings"):
        opensora.convert_state_dict(stored, wrong)
    code = torch.from_numpy(_opensora_sincos_2d(D, 32, 1.0, base_size=32)).float()
    assert opensora.convert_state_dict({"pos_embed": code}, pixart) == {}
    with torch.device("meta"):  # Open-Sora 1.0's 64×512² config: time_scale 2/3
        long = preset("opensora-v1.0-stdit-xl2-64x512", depth=1)
    out = np.outer(np.arange(64.0) / (2 / 3), omega)
    scaled = {"pos_embed_temporal": torch.from_numpy(np.concatenate([np.sin(out), np.cos(out)], 1)[None]).float()}
    assert opensora.convert_state_dict(scaled, long) == {}
    with pytest.raises(ValueError, match=r"'pos_embed_temporal'.*time_scale=1\b"):
        opensora.convert_state_dict(scaled, wrong)
    freqs = 1.0 / 10000 ** (torch.arange(0, 72, 2).float() / 72)  # rotary_embedding_torch's 'lang' frequencies
    assert opensora.convert_state_dict({"rope.freqs": freqs}, v3) == {}


def _opensora_layout(state_dict: dict) -> dict:
    """lvdm STDiT keys → Open-Sora's (the converter's renames, inverted)."""
    inverse = {new: old for old, new in opensora._RENAMES}
    published = {}
    for k, v in state_dict.items():
        for new, old in inverse.items():
            if k.startswith(new) or (new.startswith(".") and new in k):
                k = k.replace(new, old, 1)
        published[k] = v
    return published


def _opensora_v1_sincos_2d(dim: int, gh: int, gw: int, scale: float) -> np.ndarray:
    """Open-Sora 1.0's ``get_2d_sincos_pos_embed(dim, (gh, gw), scale=scale)`` step by step,
    including its reshape of the meshgrid to ``[2, 1, gw, gh]`` (a reshape, not a transpose)."""
    grid = np.stack(np.meshgrid(np.arange(gw, dtype=np.float32) / scale, np.arange(gh, dtype=np.float32) / scale))
    grid = grid.reshape([2, 1, gw, gh])

    def code(d, p):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", p.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([code(dim // 2, grid[0]), code(dim // 2, grid[1])], axis=1)[None]


def test_from_opensora_loads_a_non_square_v1_checkpoint(tmp_path):
    """An STDiT v1.0 checkpoint trained at a non-square size stores ``pos_embed`` for its grid
    (here 4 × 6 patches, 16 frames): the grid is read off the stored code and checked, where a
    square grid was assumed (``shape '[25, 32]' is invalid for input of size 768``)."""
    tiny = dict(hidden_size=32, depth=2, num_heads=2, context_dim=16, context_length=5)
    src = preset("opensora-v1.0-stdit-xl2", **tiny)  # space_scale 0.5
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    published = _opensora_layout(src.state_dict())
    published["pos_embed"] = torch.from_numpy(_opensora_v1_sincos_2d(32, 4, 6, 0.5)).float()
    omega = 1.0 / 10000 ** (np.arange(16, dtype=np.float64) / 16.0)
    out = np.outer(np.arange(16.0), omega)
    published["pos_embed_temporal"] = torch.from_numpy(np.concatenate([np.sin(out), np.cos(out)], 1)[None]).float()
    torch.save(published, tmp_path / "v1.pth")
    model = from_opensora(str(tmp_path / "v1.pth"), "opensora-v1.0-stdit-xl2", **tiny)
    for (k, a), (_, b) in zip(src.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    assert opensora.stored_grid(published["pos_embed"][0]) == (4, 6)
    torch.save(dict(published, pos_embed=torch.from_numpy(_opensora_v1_sincos_2d(32, 4, 6, 1.0)).float()),
               tmp_path / "other.pth")
    with pytest.raises(ValueError, match="'pos_embed'.*interpolation_scale=0.5"):
        from_opensora(str(tmp_path / "other.pth"), "opensora-v1.0-stdit-xl2", **tiny)


def test_from_opensora_loads_a_tiny_checkpoint(tmp_path):
    """A tiny STDiT3 checkpoint in Open-Sora's layout (written with Open-Sora's key names)
    loads through the real file reader, strictly, under DDP's ``module.`` prefix and an
    ``ema`` wrapper alike; a file that is not weights gets a clear error."""
    tiny = dict(hidden_size=32, depth=2, num_heads=2, context_dim=16, context_length=5)
    src = preset("opensora-v1.2-stdit3-xl2", **tiny)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    published = {"module." + k: v for k, v in _opensora_layout(src.state_dict()).items()}
    published["module.rope.freqs"] = 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)
    torch.save({"ema": published}, tmp_path / "stdit3.pth")
    model = from_opensora(str(tmp_path / "stdit3.pth"), "opensora-v1.2-stdit3-xl2", **tiny)
    for (k, a), (_, b) in zip(src.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        from_opensora(str(tmp_path / "bad.pth"), "opensora-v1.2-stdit3-xl2", **tiny)
