import math

import numpy as np
import pytest

from lvdm.data.buckets import BucketConfig, resolution_area

RNG = np.random.default_rng(0)


def _config(**kwargs):
    return BucketConfig({"144p": {1: (1.0, 8), 16: (1.0, 4)}, "240p": {16: (1.0, 2)}}, **kwargs)


def test_resolution_names():
    assert resolution_area("144p") == 144 * 256
    assert resolution_area("720p") == 720 * 1280
    assert resolution_area("90p") == 90 * 160
    assert resolution_area("256") == 256 * 256
    assert resolution_area("32x48") == 32 * 48
    with pytest.raises(ValueError, match="unknown resolution name 'big'"):
        resolution_area("big")


def test_bin_sizes_by_hand():
    cfg = _config()
    # 144p = 36864 px: 9:16 -> sqrt(36864 * 9/16) = 144, sqrt(36864 * 16/9) = 256
    assert cfg.bin_size("144p", 0.5625) == (144, 256)
    assert cfg.bin_size("144p", 1.0) == (192, 192)
    # 3:4 -> sqrt(27648) = 166.3 -> 160, sqrt(49152) = 221.7 -> 224 (multiples of 16)
    assert cfg.bin_size("144p", 0.75) == (160, 224)
    assert cfg.bin_size("144p", 0.7) == (160, 224)  # nearest bin in log ratio: 0.75, not 0.5625
    # 240p = 240 x 426 = 102240 px: 9:16 -> 239.8 -> 240, 426.3 -> 432
    assert cfg.bin_size("240p", 0.5625) == (240, 432)
    names = [b.name for b in cfg.buckets()]
    assert names[0].startswith("240p/16f/") and len(names) == len(set(names)) == 5 + 2 * 5


@pytest.mark.parametrize("h, w, frames, expect, reason", [
    (720, 1280, 100, "240p/16f/240x432", "ok"),     # largest area that fits
    (200, 300, 20, "144p/16f/160x224", "ok"),       # 240p's 3:4 bin (272x368) would upscale it
    (200, 300, 10, "144p/1f/160x224", "ok"),        # too short for 16 frames: the image bucket
    (300, 200, 1, "144p/1f/224x160", "ok"),         # a portrait image
    (150, 150, 1, None, "too_small"),               # 192x192 would be a 1.28x upscale
])
def test_assign_known_answers(h, w, frames, expect, reason):
    cfg = _config()
    bucket, why = cfg.assign(h, w, frames, RNG)
    assert (bucket.name if bucket else None, why) == (expect, reason)
    if bucket:
        assert max(bucket.height / h, bucket.width / w) <= 1.0
        assert bucket.batch_size == cfg.resolutions[bucket.resolution][bucket.num_frames][1]


def test_upscale_limit_frame_interval_and_unfit_reasons():
    bucket, _ = _config(max_upscale=1.3).assign(150, 150, 1, RNG)
    assert bucket.name == "144p/1f/192x192"
    # frame_interval 2: 16 frames need 31 source frames
    assert _config(frame_interval=2).assign(720, 1280, 30, RNG)[0].num_frames == 1
    assert _config(frame_interval=2).assign(720, 1280, 31, RNG)[0].num_frames == 16
    videos_only = BucketConfig({"144p": {16: (1.0, 4)}})
    assert videos_only.assign(720, 1280, 5, RNG) == (None, "too_short")
    never = BucketConfig({"144p": {1: (0.0, 4)}})
    assert never.assign(720, 1280, 5, RNG) == (None, "dropped")


def test_frequencies_follow_the_probabilities():
    cfg = BucketConfig({"240p": {16: (0.5, 2)}, "144p": {16: (0.6, 4), 1: (1.0, 8)}})
    expected = cfg.expected_frequencies(720, 1280, 50)
    # hand computation: 240p keeps half; 144p/16f keeps 0.6 of the rest; the image bucket the remainder
    assert expected == pytest.approx({"240p/16f/240x432": 0.5, "144p/16f/144x256": 0.3,
                                      "144p/1f/144x256": 0.2, None: 0.0})
    rng = np.random.default_rng(1)
    n = 4000
    names = [cfg.assign(720, 1280, 50, rng)[0].name for _ in range(n)]
    for name, p in expected.items():
        if name is None:
            continue
        seen = names.count(name) / n
        assert abs(seen - p) < 4 * math.sqrt(p * (1 - p) / n), (name, seen, p)


def test_bad_configs_name_the_problem():
    with pytest.raises(ValueError, match="144p/16f"):
        BucketConfig({"144p": {16: (1.5, 4)}})
    with pytest.raises(ValueError, match="no bins for resolution"):
        BucketConfig({"144p": {16: (1.0, 4)}}, aspect_ratios={"240p": [1.0]})
    with pytest.raises(ValueError, match="max_upscale"):
        BucketConfig({"144p": {16: (1.0, 4)}}, max_upscale=0.5)


def test_config_from_yaml_through_jsonargparse():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--buckets", type=BucketConfig)
    cfg = parser.parse_string("""
buckets:
  class_path: lvdm.data.buckets.BucketConfig
  init_args:
    resolutions:
      144p: {1: [1.0, 64], 51: [0.5, 8]}
    max_upscale: 1.1
""")
    buckets = parser.instantiate_classes(cfg).buckets
    assert buckets.resolutions == {"144p": {1: (1.0, 64), 51: (0.5, 8)}} and buckets.max_upscale == 1.1
