"""A user's raw media → ingest → split → score → filter → caption → stats → `lvdm fit` on the result."""

from pathlib import Path

import numpy as np
import pytest

from lvdm.cli import main
from lvdm.data.schema import read_manifest, read_rejects
from lvdm.data.sample_media import encode_image, encode_video

ROOT = Path(__file__).resolve().parents[2]


def two_scenes(length, seed, height=20, width=28):
    """Two flat scenes of distinct colour (a cut at ``length // 2``) with a square moving right."""
    rng = np.random.default_rng(seed)
    colours = [(200, 30, 30), (20, 90, 20)] if seed % 2 else [(90, 200, 250), (40, 40, 40)]
    out = np.empty((length, height, width, 3), np.uint8)
    for i in range(length):
        out[i] = colours[i >= length // 2]
        x = i % (width - 6)
        out[i, 6:12, x : x + 6] = 255
    return np.clip(out.astype(int) + rng.integers(-4, 5, out.shape), 0, 255).astype(np.uint8)


def curate(tmp_path, capsys, vlm_url) -> Path:
    """Raw folder → ingest → split → score → filter → caption → stats through the CLI; returns
    the training folder."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, ext in enumerate(["mp4", "webm", "mkv", "mp4"]):
        (raw / f"clip {i}.{ext}").write_bytes(encode_video(two_scenes(24, i), ext))
        (raw / f"clip {i}.txt").write_text(["a red square moving left", "a green circle moving up",
                                            "a blue square moving right", "a red circle moving down"][i])
    (raw / "still.png").write_bytes(encode_image(two_scenes(1, 0)[0], "png"))
    (raw / "still.txt").write_text("a still image")
    (raw / "broken.mp4").write_bytes(b"not a video")
    (raw / "broken.txt").write_text("never seen")

    main(["data", "ingest", "--source", str(raw), "--out", str(tmp_path / "ingested"), "--workers", "0"])
    assert "5 accepted + 1 rejected = 6" in capsys.readouterr().out
    main(["data", "split", "--source", str(tmp_path / "ingested"), "--out", str(tmp_path / "clips"),
          "--min_seconds", "1", "--workers", "0"])
    assert "split 4 videos into 8 clips" in capsys.readouterr().out
    main(["data", "score", "--source", str(tmp_path / "clips"), "--out", str(tmp_path / "scored"),
          "--scorers", "[rules, motion, duplicates]", "--options", '{"rules": {"min_short_side": 16, "min_fps": 1}}',
          "--workers", "0"])
    scores = read_manifest(tmp_path / "scored").set_index("key")
    assert scores.loc[scores["kind"] == "video", "motion"].min() > 0.5  # the square moves 1 px a frame
    main(["data", "filter", "--source", str(tmp_path / "scored"), "--out", str(tmp_path / "kept"),
          "--keep", "kind == 'video' and duration >= 1 and motion > 0.5 and not duplicate_of", "--workers", "0"])
    kept = read_manifest(tmp_path / "kept")
    videos = scores[scores["kind"] == "video"]
    duplicates = (videos["duplicate_of"].fillna("") != "").sum()  # same layout, other colours: pHash is grey
    assert len(videos) == 8 and len(kept) == len(videos) - duplicates >= 2
    main(["data", "caption", "--source", str(tmp_path / "kept"), "--out", str(tmp_path / "train"),
          "--backend", "openai", "--base_url", vlm_url, "--model", "stub-vlm", "--num_frames", "2", "--workers", "0"])
    main(["data", "stats", "--source", str(tmp_path / "train"), "--plots", "false"])
    assert f"{len(kept)} samples in 1 shards" in capsys.readouterr().out

    manifest = read_manifest(tmp_path / "train")
    assert set(manifest["caption_vlm"]) == {"2 frames of stub-vlm"}
    assert set(manifest["source_key"]) <= {"clip_0", "clip_1", "clip_2", "clip_3"}
    assert set(manifest["frames"]) == {12} and set(manifest["codec"]) == {"h264"}
    assert ("still", "filtered: kind == 'video'") in read_rejects(tmp_path / "kept")
    return tmp_path / "train"


def test_curated_folder_feeds_the_training_reader(tmp_path, capsys, vlm_url):
    from lvdm.data.datamodule import VideoDataModule

    train = curate(tmp_path, capsys, vlm_url)
    dm = VideoDataModule(str(train), str(train), batch_size=2, num_frames=4, resolution=16, samples_per_epoch=8,
                         caption_field="caption_vlm")
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(b["video"].shape == (2, 3, 4, 16, 16) for b in batches)
    assert {c for b in batches for c in b["caption"]} == {"2 frames of stub-vlm"}  # trains on the VLM captions
    assert sorted(k for b in dm.val_dataloader() for k in b["key"]) == sorted(read_manifest(train)["key"])
    assert dm.skipped == 0


@pytest.mark.slow  # ~40 s on the shared 2-core machine (a 3-step fit); the test above is its fast part
def test_raw_folder_to_a_trained_checkpoint(tmp_path, capsys, vlm_url):
    train = curate(tmp_path, capsys, vlm_url)
    run = tmp_path / "run"
    shards = str(train / "*.tar")
    main(["fit", "--config", str(ROOT / "recipes/tiny/cross_attn.yaml"),
          "--data.init_args.train_shards", shards, "--data.init_args.val_shards", shards,
          "--data.init_args.batch_size", "2", "--data.init_args.num_frames", "4",
          "--data.init_args.resolution", "16", "--data.init_args.samples_per_epoch", "8",
          "--model.init_args.sample_shape", "[4, 16, 16]",
          "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
          "--trainer.default_root_dir", str(run)])
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
