"""``lvdm eval vbench``: VBench-style dimensions on known answers, tiny random models, offline."""

import json

import numpy as np
import pytest

from lvdm.data.video import write_mp4
from lvdm.metrics import vbench as vb


def moving_square(frames: int = 8, size: int = 32, step: int = 3) -> np.ndarray:
    """A white square on grey moving right by ``step`` pixels a frame: ``uint8 [T, H, W, 3]``."""
    video = np.full((frames, size, size, 3), 96, np.uint8)
    for t in range(frames):
        x = 2 + step * t
        video[t, 8:20, x : x + 8] = 255
    return video


def still(frames: int = 8, size: int = 32) -> np.ndarray:
    return np.repeat(moving_square(1, size), frames, axis=0)


def shuffled(video: np.ndarray) -> np.ndarray:
    return video[[0, 5, 2, 7, 1, 6, 3, 4]]


def test_flickering_still_video_is_one():
    assert vb.temporal_flickering(still()) == 1.0
    assert vb.temporal_flickering(still()[:1]) == 1.0


def test_flickering_formula_and_shuffled_frames_score_lower():
    video = np.zeros((2, 4, 4, 3), np.uint8)
    video[1] = 51  # every pixel changes by 51: (255 - 51) / 255 = 0.8
    assert vb.temporal_flickering(video) == pytest.approx(0.8, rel=1e-12)
    original = vb.temporal_flickering(moving_square())
    assert original < 1.0
    assert vb.temporal_flickering(shuffled(moving_square())) < original


def test_command_reads_mp4s_prints_a_table_and_writes_json(tmp_path, capsys):
    write_mp4(tmp_path / "videos" / "a_still.mp4", still())
    write_mp4(tmp_path / "videos" / "b_moving.mp4", moving_square())
    from lvdm.cli import main

    main(["eval", "vbench", "--videos", str(tmp_path / "videos"), "--dimensions", "[temporal_flickering]",
          "--out", str(tmp_path / "report.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    still_row, moving_row = report["videos"]
    assert still_row["temporal_flickering"] == 1.0  # mp4 coding keeps a still video still
    assert moving_row["temporal_flickering"] < 1.0
    assert report["scores"]["temporal_flickering"] == pytest.approx(
        (1.0 + moving_row["temporal_flickering"]) / 2, rel=1e-9)
    assert "temporal_flickering" in capsys.readouterr().out


def test_a_video_that_does_not_decode_is_skipped_and_listed(tmp_path, capsys):
    write_mp4(tmp_path / "videos" / "a.mp4", still())
    (tmp_path / "videos" / "b_broken.mp4").write_bytes(b"not a video")
    report = vb.vbench(str(tmp_path / "videos"), dimensions=["temporal_flickering", "motion_smoothness"])
    assert report["num_videos"] == 1 and report["scores"]["temporal_flickering"] == 1.0
    assert [row["video"] for row in report["skipped"]] == [str(tmp_path / "videos" / "b_broken.mp4")]
    assert "1 skipped" in capsys.readouterr().out
    (tmp_path / "videos" / "a.mp4").unlink()
    with pytest.raises(ValueError, match="no video decoded of 1"):
        vb.vbench(str(tmp_path / "videos"), dimensions=["temporal_flickering"])


def test_unknown_dimension_and_missing_folder_fail_naming_them(tmp_path):
    with pytest.raises(ValueError, match="motion_blur.*temporal_flickering"):
        vb.vbench(str(tmp_path), dimensions=["motion_blur"])
    with pytest.raises(NotADirectoryError, match="nowhere"):
        vb.vbench(str(tmp_path / "nowhere"), dimensions=["temporal_flickering"])


def translation_flow(image1, image2):
    """A known-answer flow: the whole-frame horizontal shift (-8..8 px) that best maps frame 1
    onto frame 2, as a uniform field ``[1, 2, H, W]``."""
    import torch

    errors = {dx: (torch.roll(image1, dx, dims=-1) - image2).abs().mean().item() for dx in range(-8, 9)}
    dx = min(errors, key=errors.get)
    flow = torch.zeros(1, 2, *image1.shape[-2:])
    flow[:, 0] = dx
    return flow


def test_dynamic_degree_still_is_not_dynamic_translating_is():
    assert vb.dynamic_degree(still(), 8.0, translation_flow) is False
    assert vb.dynamic_degree(moving_square(step=3), 8.0, translation_flow) is True


def test_dynamic_degree_follows_vbench_thresholds_and_frame_rate():
    assert vb.dynamic_thresholds(256, 320, 16, 8.0) == (6.0, 4)
    assert vb.dynamic_thresholds(512, 512, 16, 4.0) == (24.0, 4)  # low fps: a larger threshold
    assert vb.dynamic_thresholds(32, 32, 8, 8.0) == (0.75, 2)
    assert vb.is_dynamic([1.0, 0.5, 1.0], 0.75, 2) and not vb.is_dynamic([1.0, 0.5, 0.5], 0.75, 2)
    assert not vb.is_dynamic([], 0.75, 0)
    # a 24 fps video keeps every 3rd frame: 3 px a frame is 9 px a kept pair, over 0.75 all the same
    assert vb.dynamic_degree(moving_square(frames=24, step=1), 24.0, translation_flow) is True


def test_top_flow_magnitude_is_the_mean_of_the_largest_five_percent():
    import torch

    flow = torch.zeros(2, 20, 20)  # 400 pixels: the top 20
    flow[0, :1, :] = 3.0
    flow[1, :1, :] = 4.0  # 20 pixels of magnitude 5
    flow[0, 1, :] = 1.0  # then 20 of magnitude 1
    assert vb.top_flow_magnitude(flow) == pytest.approx(5.0, rel=1e-12)


def test_raft_weights_round_trip_through_a_local_file(tmp_path):
    import torch

    try:
        builder = vb._raft_builder("raft_small")
    except ImportError as err:
        pytest.skip(str(err))
    torch.manual_seed(0)
    torch.save(builder(weights=None, progress=False).state_dict(), tmp_path / "raft.pth")
    flow = vb.RaftFlow(str(tmp_path / "raft.pth"), arch="raft_small", iters=2)
    video = torch.from_numpy(moving_square(2)).permute(0, 3, 1, 2).float()
    field = flow(video[:1], video[1:])
    assert field.shape == (1, 2, 32, 32) and torch.isfinite(field).all()
    assert isinstance(vb.dynamic_degree(moving_square(), 8.0, flow), bool)


def test_a_missing_flow_model_fails_before_any_video_naming_the_path(tmp_path):
    write_mp4(tmp_path / "videos" / "a.mp4", still())
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        vb.vbench(str(tmp_path / "videos"), dimensions=["dynamic_degree"], flow_weights=str(tmp_path / "nothere.pth"))
    with pytest.raises(ValueError, match="flow_weights"):
        vb.vbench(str(tmp_path / "videos"), dimensions=["dynamic_degree"])


@pytest.fixture(scope="module")
def dino_dirs(tmp_path_factory):
    """Tiny random DINO models (ViTModel, Dinov2Model) saved with save_pretrained."""
    import torch
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                 patch_size=8)
    dirs = {}
    for name, model in (("vit", ViTModel(ViTConfig(**small))),
                        ("dinov2", Dinov2Model(Dinov2Config(**small)))):
        dirs[name] = tmp_path_factory.mktemp(f"tiny_{name}")
        model.save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def clip_vision_dir(tmp_path_factory):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_clip_vision")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(path)
    return path


def test_consistency_formula():
    import torch

    assert vb.consistency(torch.ones(5, 4)) == 1.0
    assert vb.consistency(torch.ones(1, 4)) == 1.0
    # frames e0, e0, e1: pair 1 -> (1 + 1) / 2, pair 2 -> (cos(e0, e1)=0 + 0) / 2
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert vb.consistency(features) == pytest.approx(0.5, rel=1e-12)
    assert vb.consistency(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == 0.0  # negative cosines clamp at 0


@pytest.mark.parametrize("transform", [vb.dino_transform, vb.clip_transform])
def test_consistency_of_shuffled_frames_is_lower(transform):
    """With features faithful to the content (the normalised pixels themselves), a shuffled video
    is less consistent: its frames' previous frames are further away (random tiny models'
    features do not order videos by content, so they cannot show this)."""
    import torch

    encoder = vb.FrameEncoder(torch.nn.Flatten(), transform, 32, lambda model, pixels: model(pixels))
    original = vb.consistency(encoder(moving_square()))
    assert vb.consistency(encoder(still())) == pytest.approx(1.0, rel=1e-9)
    assert vb.consistency(encoder(shuffled(moving_square()))) < original < 1.0


@pytest.mark.parametrize("which", ["vit", "dinov2"])
def test_subject_consistency_of_identical_frames_is_one(dino_dirs, which):
    encoder = vb.load_dino(str(dino_dirs[which]))
    features = encoder(still())
    assert features.shape == (8, 32)
    assert vb.consistency(features) == pytest.approx(1.0, rel=1e-9)  # float rounding of cos(x, x) only
    assert vb.consistency(encoder(moving_square())) < 1.0
    assert encoder(moving_square(size=48)[:, :, :40]).shape == (8, 32)  # any frame shape: positions interpolated


@pytest.mark.parametrize("source", ["vision", "full"])
def test_background_consistency_with_clip_vision_or_full_clip(clip_vision_dir, clip_dir, source):
    encoder = vb.load_clip_image(str(clip_vision_dir if source == "vision" else clip_dir))
    assert encoder(still()).shape == (8, 32 if source == "vision" else 16)  # pooled, or projected (16)
    assert vb.consistency(encoder(still())) == pytest.approx(1.0, rel=1e-9)
    assert vb.consistency(encoder(moving_square())) < 1.0


def test_wrong_or_missing_feature_models_fail_naming_them(tmp_path, clip_vision_dir, dino_dirs):
    with pytest.raises(FileNotFoundError, match="no_dino"):
        vb.load_dino(str(tmp_path / "no_dino"))
    with pytest.raises(TypeError, match="CLIPVisionModel"):
        vb.load_dino(str(clip_vision_dir))
    with pytest.raises(TypeError, match="ViTModel"):
        vb.load_clip_image(str(dino_dirs["vit"]))


def test_command_reports_consistencies_frame_weighted_next_to_dynamic_degree(tmp_path, dino_dirs, clip_vision_dir,
                                                                               clip_dir, monkeypatch):
    import torch

    torch.save({"weight": torch.zeros(1, 16), "bias": torch.tensor([5.0])}, tmp_path / "head.pth")
    write_mp4(tmp_path / "videos" / "a_still.mp4", still())
    write_mp4(tmp_path / "videos" / "b_moving.mp4", moving_square())
    write_mp4(tmp_path / "videos" / "c_short.mp4", moving_square(frames=4))
    monkeypatch.setattr(vb, "RaftFlow", lambda *args: translation_flow)  # the known-answer flow in place of RAFT
    report = vb.vbench(str(tmp_path / "videos"), dino=str(dino_dirs["vit"]), clip=str(clip_vision_dir),
                       flow_weights="unused.pth", aesthetic_clip=str(clip_dir),
                       aesthetic_head=str(tmp_path / "head.pth"), device="cpu")
    assert list(report["scores"]) == list(vb.DIMENSIONS) == [
        "temporal_flickering", "motion_smoothness", "subject_consistency", "background_consistency", "dynamic_degree",
        "aesthetic_quality"]  # dynamic degree next to the consistencies
    assert report["scores"]["aesthetic_quality"] == pytest.approx(0.5, rel=1e-12)
    rows = report["videos"]
    assert [row["dynamic_degree"] for row in rows] == [0.0, 1.0, 1.0]
    assert rows[0]["subject_consistency"] == pytest.approx(1.0, rel=1e-6)  # still: consistent, and not dynamic
    weighted = (7 * rows[0]["subject_consistency"] + 7 * rows[1]["subject_consistency"]
                + 3 * rows[2]["subject_consistency"]) / 17  # VBench: the mean over all frame pairs
    assert report["scores"]["subject_consistency"] == pytest.approx(weighted, rel=1e-9)
    assert report["scores"]["dynamic_degree"] == pytest.approx(2 / 3, rel=1e-9)


def test_aesthetic_quality_is_the_mean_laion_score_over_frames_over_ten(tmp_path, clip_dir):
    import torch

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 1)  # the tiny CLIP's projected embedding is 16-d
    torch.save(head.state_dict(), tmp_path / "head.pth")
    scorer = vb.load_aesthetic(str(clip_dir), str(tmp_path / "head.pth"))
    video = moving_square()
    embeddings = torch.from_numpy(scorer.image_embeddings(list(video)))
    assert embeddings.shape == (8, 16)  # every frame scored
    expected = float((embeddings.float() @ head.weight.detach().T + head.bias.detach()).mean()) / 10
    assert vb.aesthetic_quality(video, scorer) == pytest.approx(expected, rel=1e-5)
    torch.save({"weight": torch.zeros(1, 16), "bias": torch.tensor([7.0])}, tmp_path / "seven.pth")
    assert vb.aesthetic_quality(video, vb.load_aesthetic(str(clip_dir), str(tmp_path / "seven.pth"))) == \
        pytest.approx(0.7, rel=1e-12)


def test_missing_aesthetic_models_fail_naming_them(tmp_path, clip_dir):
    write_mp4(tmp_path / "videos" / "a.mp4", still())
    with pytest.raises(FileNotFoundError, match="nohead.pth"):
        vb.vbench(str(tmp_path / "videos"), dimensions=["aesthetic_quality"], aesthetic_clip=str(clip_dir),
                  aesthetic_head=str(tmp_path / "nohead.pth"))
    with pytest.raises(ValueError, match="aesthetic_head"):
        vb.vbench(str(tmp_path / "videos"), dimensions=["aesthetic_quality"], aesthetic_clip=str(clip_dir))


def test_motion_smoothness_known_answers():
    assert vb.motion_smoothness(still()) == 1.0
    assert vb.motion_smoothness(still()[:2]) == 1.0  # nothing to rebuild
    fade = np.stack([np.full((4, 4, 3), 10 * t, np.uint8) for t in range(7)])
    assert vb.motion_smoothness(fade) == 1.0  # a linear fade is rebuilt exactly
    flashed = fade.copy()
    flashed[3] = 81  # frame 3 should be 30: off by 51 on the 3 rebuilt frames' mean -> (255 - 17) / 255
    assert vb.motion_smoothness(flashed) == pytest.approx((255 - 51 / 3) / 255, rel=1e-12)


def test_motion_smoothness_of_shuffled_frames_is_lower():
    original = vb.motion_smoothness(moving_square())
    assert vb.motion_smoothness(shuffled(moving_square())) < original < 1.0
    # the interpolator is pluggable: a perfect one (the real middle frame) scores 1
    video = moving_square()
    middle = {(a.tobytes(), b.tobytes()): video[t + 1] for t, (a, b) in enumerate(zip(video[:-2], video[2:]))}
    assert vb.motion_smoothness(video, lambda a, b: middle[a.tobytes(), b.tobytes()]) == 1.0


def test_dynamic_degree_without_a_model_through_the_command(tmp_path):
    """``flow=lucas_kanade``: no RAFT weights needed; a still video is not dynamic, a square
    moving 3 px a frame at 32x32 (threshold 0.75 px) is."""
    write_mp4(tmp_path / "videos" / "a_still.mp4", still())
    write_mp4(tmp_path / "videos" / "b_moving.mp4", moving_square())
    report = vb.vbench(str(tmp_path / "videos"), dimensions=["dynamic_degree"], flow="lucas_kanade")
    assert [row["dynamic_degree"] for row in report["videos"]] == [0.0, 1.0]
    assert report["flow"] == "lucas_kanade"
    with pytest.raises(ValueError, match="flow 'farneback' is not one of raft, lucas_kanade"):
        vb.vbench(str(tmp_path / "videos"), dimensions=["dynamic_degree"], flow="farneback")


def test_vbench_scores_metric_matches_the_command_on_the_same_frames(tmp_path):
    """The Metric behind PeriodicEvaluation: videos in [-1, 1] give the same per-dimension means
    as scoring their uint8 frames one by one, and a still video is 1 / not dynamic."""
    import torch

    videos = [still(), moving_square(), shuffled(moving_square())]
    tensors = torch.stack([torch.from_numpy(v).permute(3, 0, 1, 2).float() / 127.5 - 1 for v in videos])
    metric = vb.VBenchScores(["dynamic_degree", "temporal_flickering", "motion_smoothness"], flow="lucas_kanade")
    metric.update(tensors[:1], fps=8.0)
    assert metric.compute() == {"temporal_flickering": 1.0, "motion_smoothness": 1.0, "dynamic_degree": 0.0}
    metric.update(tensors[1:], fps=8.0)
    scores = metric.compute()
    assert list(scores) == ["temporal_flickering", "motion_smoothness", "dynamic_degree"]  # the report's order
    assert scores["temporal_flickering"] == pytest.approx(np.mean([vb.temporal_flickering(v) for v in videos]),
                                                          rel=1e-12)
    assert scores["motion_smoothness"] == pytest.approx(np.mean([vb.motion_smoothness(v) for v in videos]), rel=1e-12)
    assert scores["dynamic_degree"] == pytest.approx(2 / 3, rel=1e-12)


def test_vbench_scores_weights_consistency_by_frame_pairs(dino_dirs):
    import torch

    videos = [still(), moving_square(frames=4)]
    metric = vb.VBenchScores(["subject_consistency"], dino=str(dino_dirs["vit"]))
    for video in videos:
        metric.update(torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1)
    encoder = vb.load_dino(str(dino_dirs["vit"]))
    expected = (7 * vb.consistency(encoder(videos[0])) + 3 * vb.consistency(encoder(videos[1]))) / 10
    assert metric.compute()["subject_consistency"] == pytest.approx(expected, rel=1e-6)
    # under the trainer's autocast (bf16 here) the models still run in full precision
    metric.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        metric.update(torch.from_numpy(videos[1]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1)
    assert metric.compute()["subject_consistency"] == pytest.approx(vb.consistency(encoder(videos[1])), rel=1e-6)


def test_vbench_scores_bad_options_fail_at_once_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"unknown VBench option\(s\) \['dinov2'\]"):
        vb.VBenchScores(["subject_consistency"], dinov2="x")
    with pytest.raises(ValueError, match="flow_weights"):
        vb.VBenchScores(["dynamic_degree"])  # RAFT by default: its weights are needed
    with pytest.raises(FileNotFoundError, match="no_dino"):
        vb.VBenchScores(["subject_consistency"], dino=str(tmp_path / "no_dino"))
    with pytest.raises(ValueError, match="no VBench dimension"):
        vb.VBenchScores([])
