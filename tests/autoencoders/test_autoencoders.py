import pytest
import torch

from lvdm.autoencoders import CausalVAE3D, EMAVectorQuantizer, PatchDiscriminator3D, VideoVQVAE
from lvdm.autoencoders.losses import adaptive_weight, hinge_discriminator_loss, psnr


def tiny_vae(**kw):
    args = dict(latent_channels=4, base_channels=8, channel_mult=(1, 1, 2, 2), num_res_blocks=1)
    return CausalVAE3D(**{**args, **kw}).eval()


def tiny_vq(**kw):
    args = dict(latent_channels=4, num_codes=32, base_channels=8, channel_mult=(1, 1, 2), num_res_blocks=1)
    return VideoVQVAE(**{**args, **kw}).eval()


@pytest.mark.parametrize("frames,latent_frames", [(1, 1), (5, 2), (9, 3), (17, 5)])
def test_causal_vae_shapes(frames, latent_frames):
    vae = tiny_vae()
    x = torch.rand(1, 3, frames, 16, 16) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (1, 4, latent_frames, 2, 2)
        assert vae.decode(z).shape == x.shape
        out = vae(x)
    assert out.reconstruction.shape == x.shape and out.losses["kl"].ndim == 0


@pytest.mark.parametrize("frames", [0, 2, 4, 8, 10])
def test_causal_vae_refuses_invalid_frame_counts(frames):
    with pytest.raises(ValueError, match=r"num_frames=%d .*1 \+ 4k" % frames):
        tiny_vae().encode(torch.zeros(1, 3, frames, 32, 32))


def test_spatial_size_must_divide():
    with pytest.raises(ValueError, match="multiples of spatial_downsample=8"):
        tiny_vae().encode(torch.zeros(1, 3, 5, 36, 32))


def test_channel_mult_must_match_factors():
    with pytest.raises(ValueError, match="channel_mult needs 4 entries"):
        CausalVAE3D(channel_mult=(1, 2, 4))
    with pytest.raises(ValueError, match="power of two"):
        CausalVAE3D(time_downsample=3)


def test_first_latent_frame_depends_only_on_first_frame(assert_close_scaled):
    torch.manual_seed(0)
    vae = tiny_vae()
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    y = x.clone()
    y[:, :, 1:] = torch.rand_like(y[:, :, 1:])  # every later frame changed
    z = torch.rand_like(x)
    z[:, :, :5] = x[:, :, :5]  # frames 5..8 changed only
    with torch.no_grad():
        zx, zy, zz = vae.encode(x), vae.encode(y), vae.encode(z)
        image = vae.encode(x[:, :, :1])
    assert torch.equal(zx[:, :, 0], zy[:, :, 0])
    assert not torch.allclose(zx[:, :, 1:], zy[:, :, 1:])
    assert torch.equal(zx[:, :, :2], zz[:, :, :2])  # latent frame k sees frames <= 4k
    assert_close_scaled(image[:, :, 0], zx[:, :, 0])  # an image encodes as the first frame


def test_non_causal_variant_mixes_time():
    """The causality test above can fail: without causal padding the first latent sees later frames."""
    torch.manual_seed(0)
    vae = tiny_vae(causal=False)
    x = torch.rand(1, 3, 8, 32, 32)
    y = x.clone()
    y[:, :, 1:] = 0
    with torch.no_grad():
        assert not torch.allclose(vae.encode(x)[:, :, 0], vae.encode(y)[:, :, 0])


def test_vqvae_shapes_and_snap(assert_close_scaled):
    vq = tiny_vq()
    x = torch.rand(2, 3, 8, 16, 16) * 2 - 1
    with torch.no_grad():
        z = vq.encode(x)
        assert z.shape == (2, 4, 2, 4, 4)
        codes = vq.quantizer.codebook
        rows = z.movedim(1, -1).reshape(-1, 4)
        # z are codes; compared element-wise: cdist's matmul form is only sqrt(eps) ~ 1e-3 exact near 0
        assert_close_scaled(rows, codes[torch.cdist(rows, codes).argmin(1)])
        assert vq.decode(z).shape == x.shape
    with pytest.raises(ValueError, match="multiple of 4"):
        vq.encode(torch.zeros(1, 3, 9, 16, 16))


def _clustered(n, centres, generator):
    pick = torch.randint(0, centres.shape[0], (n,), generator=generator)
    return centres[pick] + 0.01 * torch.randn(n, centres.shape[1], generator=generator)


@pytest.mark.parametrize("restart", [True, False])
def test_dead_code_restart_revives_codes(restart):
    """Codes initialised far from the data are never chosen; restarts bring them back."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(32, 4, generator=g) * 3
    vq = EMAVectorQuantizer(num_codes=32, dim=4, decay=0.9, restart_threshold=1.0 if restart else 0.0).train()
    vq.codebook.copy_(torch.randn(32, 4, generator=g) + 100)  # far away, already "initialised"
    vq.codebook[0] = 0.0
    vq.embed_sum.copy_(vq.codebook)
    vq.cluster_size.fill_(1.0)
    vq.initialized.fill_(True)
    for _ in range(60):
        vq(_clustered(512, centres, g).T.reshape(1, 4, 512, 1, 1))
    usage = vq.eval()(_clustered(4096, centres, g).T.reshape(1, 4, 4096, 1, 1))[2]["usage"]
    if restart:
        assert usage >= 0.9
    else:
        assert usage <= 2 / 32


def test_vqvae_codebook_usage_after_short_training():
    torch.manual_seed(0)
    vq = tiny_vq(num_codes=32, decay=0.9, channel_mult=(1, 1), time_downsample=1, spatial_downsample=2).train()
    opt = torch.optim.Adam(vq.parameters(), lr=2e-3)
    x = torch.rand(4, 3, 2, 8, 8) * 2 - 1  # 128 latent vectors for 32 codes
    for _ in range(10):
        out = vq(x)
        loss = (out.reconstruction - x).abs().mean() + sum(out.losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert out.stats["usage"] >= 0.75, out.stats


def test_discriminator_and_losses():
    d = PatchDiscriminator3D(base_channels=8, num_layers=3)
    assert d(torch.zeros(2, 3, 9, 32, 32)).shape == (2, 1, 9, 4, 4)
    assert d(torch.zeros(1, 3, 1, 32, 32)).shape == (1, 1, 1, 4, 4)
    assert hinge_discriminator_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0
    assert hinge_discriminator_loss(torch.zeros(4), torch.zeros(4)) == 1
    w = torch.ones(3, requires_grad=True)
    assert torch.isclose(adaptive_weight((w * 2).sum(), (w * 0.5).sum(), w), torch.tensor(4.0), rtol=1e-3)
    x = torch.zeros(1, 3, 2, 4, 4)
    assert torch.isclose(psnr(x + 0.02, x), torch.tensor(4 / 0.0004).log10() * 10)
