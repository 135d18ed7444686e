"""The image-to-video micro-condition ``image_condition`` packed from lvdm's given frames: Open-Sora 2.0's
MMDiT (a mask channel + the given frames' latents) and Wan 2.1 I2V (4 mask channels + latents), the
layouts against their sources, and LatentDiffusionModule feeding it in training and in ``generate``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

from lvdm.compressors.pixels import PixelCompressor
from lvdm.diffusion.masking import FrameMasks
from lvdm.diffusion.objectives import RectifiedFlow
from lvdm.models.contract import image_condition_kwargs
from lvdm.models.diffusers_adapter import WanBackbone, WanExperts
from lvdm.models.mmdit import MMDiT
from lvdm.text.words import WordTextEncoder
from lvdm.training.module import LatentDiffusionModule


def _mmdit(image_condition_channels: int = 4) -> MMDiT:
    torch.manual_seed(0)
    model = MMDiT(in_channels=3, hidden_size=24, num_heads=2, depth_double=1, depth_single=1, context_dim=16,
                  refiner_depth=0, pooled_text_dim=0, rope_axes_dims=(4, 4, 4), text_mask=False,
                  image_condition_channels=image_condition_channels)
    with torch.no_grad():  # off the zero init, so the condition changes the output
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _opensora2_condition(z: torch.Tensor, ref: torch.Tensor, cond_type: str) -> torch.Tensor:
    """Open-Sora 2.0's documented rule (``prepare_inference_condition``, then ``cat((masks, masked_ref))``)
    in float64: mask 1 on the given frames (``i2v_head``: the first; ``i2v_loop``: first and last),
    the reference latents there, zeros elsewhere."""
    masks, masked = torch.zeros_like(z[:, :1]), torch.zeros_like(z)
    frames = [0] if cond_type == "i2v_head" else [0, -1]
    for f in frames:
        masks[:, :, f] = 1
        masked[:, :, f] = ref[:, :, f]
    return torch.cat([masks, masked], dim=1)


@pytest.mark.parametrize("cond_type", ["i2v_head", "i2v_loop"])
def test_mmdit_packs_opensora2_cond(cond_type):
    model = _mmdit(image_condition_channels=17)
    z = torch.randn(2, 16, 5, 4, 6, dtype=torch.float64)
    given = torch.zeros(2, 5, dtype=torch.bool)
    given[:, 0] = True
    if cond_type == "i2v_loop":
        given[:, -1] = True
    assert torch.equal(model.pack_image_condition(z, given), _opensora2_condition(z, z, cond_type))
    with pytest.raises(ValueError, match="image_condition_channels=17 != 1 mask channels \\+ 4 latent channels"):
        model.pack_image_condition(z[:, :4], given)


class _GreyVAE(torch.nn.Module):
    """A VAE-free stand-in for the Wan-VAE in ``prepare_latents``: 4× causal time (latent frame 0 from
    pixel frame 0, then 4 pixel frames each), 2× space, 3 → 4 channels by a fixed map."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv3d(3, 4, 1)
        self.config = SimpleNamespace(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.0, 0.5, 1.5], z_dim=4)

    @property
    def dtype(self) -> torch.dtype:
        return self.proj.weight.dtype

    def encode(self, video: torch.Tensor):
        first, rest = video[:, :, :1], video[:, :, 1:]
        rest = rest.reshape(*rest.shape[:2], -1, 4, *rest.shape[3:]).mean(3)
        z = torch.nn.functional.avg_pool3d(self.proj(torch.cat([first, rest], 2) + 0.5), (1, 2, 2))
        return SimpleNamespace(latents=z)


def test_wan_packs_the_pipeline_mask_and_first_frame():
    """diffusers' own ``WanImageToVideoPipeline.prepare_latents`` (run on a VAE stand-in): the 4 mask
    channels equal lvdm's for the first latent frame given, and the first frame's latents too; after
    it diffusers has the latents of grey frames where lvdm has zeros (documented)."""
    with torch.device("meta"):
        model = WanBackbone(WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                                  in_channels=12, out_channels=4, text_dim=8, freq_dim=16, ffn_dim=32,
                                                  num_layers=1, rope_max_seq_len=32), text_length=None)
    torch.manual_seed(0)
    pipe = SimpleNamespace(vae=_GreyVAE().double(), vae_scale_factor_temporal=4, vae_scale_factor_spatial=2,
                           config=SimpleNamespace(expand_timesteps=False))
    image = torch.rand(1, 3, 8, 12, dtype=torch.float64) * 2 - 1  # one image, repeated per video by the pipeline
    _, condition = WanImageToVideoPipeline.prepare_latents(pipe, image, 2, 4, 8, 12, 9, torch.float64,
                                                          torch.device("cpu"), torch.Generator().manual_seed(0))
    given = torch.tensor([[True, False, False]] * 2)
    ours = model.pack_image_condition(condition[:, 4:], given)
    assert condition.shape == ours.shape == (2, 8, 3, 4, 6)
    assert torch.equal(ours[:, :4], condition[:, :4]) and torch.equal(ours[:, 4:, 0], condition[:, 4:, 0])
    assert not ours[:, 4:, 1:].any() and condition[:, 4:, 1:].abs().min() > 0
    experts = WanExperts(model, model, 0.9)  # Wan 2.2's two experts pack as one
    assert torch.equal(image_condition_kwargs(experts, condition[:, 4:], given)["image_condition"], ours)


def _module(denoiser, **kw) -> LatentDiffusionModule:
    return LatentDiffusionModule(denoiser, WordTextEncoder(dim=16, max_length=4), RectifiedFlow(num_sampling_steps=2),
                                 PixelCompressor(), sample_shape=(3, 8, 8), **kw)


def _capture(denoiser) -> list:
    seen = []
    denoiser.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs.get("image_condition")),
                                       with_kwargs=True)
    return seen


def test_training_with_image_to_video_gives_the_condition():
    denoiser = _mmdit()
    module = _module(denoiser, frame_masks=FrameMasks(image_to_video=1.0))
    seen = _capture(denoiser)
    batch = {"video": torch.rand(2, 3, 3, 8, 8) * 2 - 1, "caption": ["a red square", "blue"]}
    module.diffusion_loss(batch)
    latents = module.latents(batch)
    (cond,) = seen
    assert cond.abs().sum() > 0
    assert torch.equal(cond[:, :1, 0], torch.ones_like(cond[:, :1, 0])) and not cond[:, :1, 1:].any()
    assert torch.equal(cond[:, 1:, 0], latents[:, :, 0]) and not cond[:, 1:, 1:].any()
    plain = _module(denoiser)  # no frame masks: text-to-video passes nothing (the model's zeros, as before)
    plain.diffusion_loss(batch)
    assert seen[-1] is None


@pytest.mark.parametrize("backbone", ["mmdit", "wan"])
def test_generate_with_an_image_passes_the_condition(backbone):
    """The prompts' half gets the packed first frame, the unconditional half zeros; text-to-video
    passes none (unchanged), and the condition changes the video."""
    if backbone == "mmdit":
        denoiser = _mmdit()
    else:
        torch.manual_seed(0)
        denoiser = WanBackbone(WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                                     in_channels=10, out_channels=3, text_dim=16, freq_dim=16,
                                                     ffn_dim=32, num_layers=1, rope_max_seq_len=32), text_length=None)
    module = _module(denoiser).eval()
    seen = _capture(denoiser)
    image = torch.rand(1, 3, 1, 8, 8) * 2 - 1
    with_image = module.generate(["a red square"], guidance_scale=4.0, first_frames=image)
    cond = seen[0]
    mask_channels = denoiser.image_condition_channels - 3
    assert cond.shape == (2, denoiser.image_condition_channels, 3, 8, 8) and not cond[1].any()
    assert torch.equal(cond[0, :mask_channels, 0], torch.ones(mask_channels, 8, 8))
    assert torch.equal(cond[0, mask_channels:, 0], module.compressor.encode(image)[0, :, 0])
    seen.clear()
    text_only = module.generate(["a red square"], guidance_scale=4.0)
    assert seen and all(c is None for c in seen)
    x_given, frame_mask = module.given_latents(image, torch.zeros(1, 3, 3, 8, 8))
    denoiser.pack_image_condition = None  # the module then passes no condition: the video must change
    without = module.generate(["a red square"], guidance_scale=4.0, first_frames=image)
    assert not torch.equal(with_image, without) and image_condition_kwargs(denoiser, x_given, frame_mask) == {}
    assert text_only.shape == with_image.shape
