import torch

from lvdm.compressors import PixelCompressor


def test_pixel_round_trip_and_shape():
    comp = PixelCompressor()
    video = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    z = comp.encode(video)
    assert z.shape == video.shape
    torch.testing.assert_close(comp.decode(z), video)
    assert comp.latent_shape(4, 8, 8) == (3, 4, 8, 8)
    assert (comp.latent_channels, comp.time_downsample, comp.spatial_downsample) == (3, 1, 1)


def test_pixel_compressor_stays_frozen():
    comp = PixelCompressor(channels=1)
    comp.train()
    assert not comp.training
    assert not comp.encode(torch.zeros(1, 1, 1, 2, 2, requires_grad=True)).requires_grad
