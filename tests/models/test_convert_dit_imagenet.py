"""ImageNet DiT weights in facebookresearch's and diffusers' layouts load into lvdm's DiT."""

import pytest
import torch

from lvdm.checkpoints.load import UnsafeCheckpointError
from lvdm.models.convert.dit_imagenet import load_diffusers, load_facebook
from lvdm.models.dit import DiT
from lvdm.models.stdit import sincos_2d

TINY = dict(in_channels=4, out_channels=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=10,
            position="sincos_2d")


def _perturbed(model):
    torch.manual_seed(1)
    with torch.no_grad():  # off the zero init, so every weight shows in the output
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _facebook_layout(model: DiT, side: int) -> dict:
    """The state dict facebookresearch/DiT's ``DiT`` module would hold for ``model``'s weights."""
    sd = {}
    for key, value in model.state_dict().items():
        if key == "x_embedder.proj.weight":
            value = value.squeeze(2)
        sd[key.replace(".attns.0.", ".attn.")] = value.clone()
    sd["pos_embed"] = sincos_2d(model.hidden_size, side, side, None, 1.0)[None]
    return sd


def _inputs(labels):
    torch.manual_seed(2)
    return torch.randn(len(labels), 4, 1, 8, 8), torch.tensor([3.0, 700.0])[: len(labels)], torch.tensor(labels)


@pytest.mark.parametrize("wrapper", [None, "ema", "model"])
def test_facebook_checkpoint_round_trip(tmp_path, wrapper, assert_close_scaled):
    model = _perturbed(DiT(**TINY))
    sd = _facebook_layout(model, side=4)
    path = tmp_path / "DiT-tiny.pt"
    torch.save(sd if wrapper is None else {wrapper: sd}, path)
    loaded = load_facebook(str(path), num_heads=2).eval()
    x, t, y = _inputs([1, 9])
    assert_close_scaled(loaded(x, t, class_labels=y), model(x, t, class_labels=y))
    assert loaded.out_channels == 8 and loaded.num_classes == 10 and loaded.position == "sincos_2d"


def test_facebook_checkpoint_refusals(tmp_path):
    model = DiT(**TINY)
    sd = _facebook_layout(model, side=4)
    sd["pos_embed"] = sd["pos_embed"] * 2  # another position code
    torch.save(sd, tmp_path / "pos.pt")
    with pytest.raises(ValueError, match="pos_embed differs from the DiT paper's 2D sin-cos code"):
        load_facebook(str(tmp_path / "pos.pt"), num_heads=2)
    torch.save(_facebook_layout(model, side=4), tmp_path / "ok.pt")
    with pytest.raises(ValueError, match="width 32 is none of the DiT paper's sizes"):
        load_facebook(str(tmp_path / "ok.pt"))  # no head count for an unknown width
    torch.save({"model": sd, "args": torch.nn.Identity()}, tmp_path / "code.pt")
    with pytest.raises(UnsafeCheckpointError, match="code.pt"):
        load_facebook(str(tmp_path / "code.pt"), num_heads=2)


def tiny_diffusers_dit(tie: bool = True):
    """A random diffusers ``DiTTransformer2DModel`` (1000 classes: DiTPipeline's null label is 1000);
    with ``tie``, every block's embedders are block 0's, as in the published folders."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                  num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if tie:
            for block in model.transformer_blocks[1:]:
                block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    return model.eval()


def test_diffusers_folder_matches_diffusers(tmp_path, assert_close_scaled):
    ref = tiny_diffusers_dit()
    ref.save_pretrained(tmp_path / "dit")
    ours = load_diffusers(str(tmp_path / "dit")).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) - 1 * (
        sum(p.numel() for p in ref.transformer_blocks[1].norm1.emb.parameters()))  # one shared embedder copy
    torch.manual_seed(3)
    x = torch.randn(2, 4, 8, 8)
    t, y = torch.tensor([5, 900]), torch.tensor([7, 1000])  # 1000: the null label
    with torch.no_grad():
        expected = ref(x, timestep=t, class_labels=y).sample
        got = ours(x[:, :, None], t.float(), class_labels=y)[:, :, 0]
    assert_close_scaled(got, expected, rtol=1e-4)  # diffusers' 1e-5 MLP-norm eps vs 1e-6


def test_diffusers_folder_with_unequal_embedders_is_refused(tmp_path):
    tiny_diffusers_dit(tie=False).save_pretrained(tmp_path / "dit")
    with pytest.raises(ValueError, match="transformer_blocks.1.norm1.emb.* differs from block 0's"):
        load_diffusers(str(tmp_path / "dit"))
    with pytest.raises(FileNotFoundError, match="not a diffusers DiT folder"):
        load_diffusers(str(tmp_path))


def test_real_sizes_on_meta():
    """DiT-XL/2: 674,834,720 parameters, the original's 675,129,632 less its stored (frozen) 256 × 1152
    pos_embed, which lvdm computes."""
    with torch.device("meta"):
        xl = DiT(size="XL/2", in_channels=4, out_channels=8, num_classes=1000, position="sincos_2d")
    assert sum(p.numel() for p in xl.parameters()) == 675_129_632 - 256 * 1152


def test_published_layout_gives_the_preset_architecture():
    """The arguments read from DiT-XL-2-256x256.pt's shapes are the ``dit-xl2-256`` preset's."""
    from lvdm.models.convert.dit_imagenet import facebook_kwargs
    from lvdm.models.presets import from_name

    chosen = from_name("dit-xl2-256")
    with torch.device("meta"):
        published = _facebook_layout(chosen.build(), side=16)
        ours = DiT(**facebook_kwargs(published))
    assert sum(p.numel() for p in ours.parameters()) == chosen.num_params
    assert sum(v.numel() for v in published.values()) == 675_129_632  # the original's count, pos_embed included
    assert (ours.num_heads, ours.patch_size, ours.out_channels, ours.num_classes) == (16, (1, 2, 2), 8, 1000)
