"""Model stages load their models before the first sample and fail at once, naming what is
missing; a stage in which every sample failed exits non-zero."""

import huggingface_hub
import pytest

from conftest import StubVLM, panning, video_sample, write_dataset
from lvdm.curation.caption import caption_dataset
from lvdm.curation.engine import StageFailedError
from lvdm.curation.score import score_dataset
from lvdm.curation.scorers import MotionScorer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    samples = [video_sample(f"v{i}", panning(48, 64, 6, 1 + i, seed=i), f"clip {i}") for i in range(3)]
    return write_dataset(tmp_path_factory.mktemp("raw"), samples, per_shard=2)


@pytest.fixture()
def no_hub(monkeypatch):
    """Any hub request fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


def test_a_missing_local_head_fails_at_once_without_the_hub(dataset, tmp_path, no_hub):
    missing = tmp_path / "heads" / "sa_0_4_vit_l_14_linear.pth"
    with pytest.raises(FileNotFoundError, match=f"aesthetic head '{missing}' does not exist"):
        score_dataset(str(dataset), str(tmp_path / "out"), scorers=["aesthetic", "clip_match"],
                      clip="openai/clip-vit-large-patch14", aesthetic_head=str(missing), workers=0)
    assert not (tmp_path / "out").exists()  # nothing was read or written


@pytest.mark.parametrize("name", ["./models/clip", "models/clip/v1", "~/no-such-clip-folder"])
def test_a_missing_local_model_folder_fails_at_once_without_the_hub(dataset, tmp_path, no_hub, name):
    with pytest.raises(FileNotFoundError, match="CLIP model .* does not exist"):
        score_dataset(str(dataset), str(tmp_path / "out"), scorers=["clip_match"], clip=name, workers=0)


def test_an_uncached_hub_id_fails_at_once_when_offline(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda *a, **k: pytest.fail("the hub was asked"))
    with pytest.raises(FileNotFoundError, match="CLIP model 'lvdm-tests/no-such-clip' is not a local path nor "
                                                 "in the hub cache, and the hub is offline"):
        score_dataset(str(dataset), str(tmp_path / "out"), scorers=["clip_match"], clip="lvdm-tests/no-such-clip",
                      workers=0)


def test_an_unreachable_hub_is_asked_once_and_fails(dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []

    def unreachable(self, repo_id, timeout=None, **kwargs):
        asked.append((repo_id, timeout))
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    with pytest.raises(FileNotFoundError, match="the hub cannot give it .ConnectionError: Failed to resolve"):
        score_dataset(str(dataset), str(tmp_path / "out"), scorers=["clip_match"], clip="lvdm-tests/no-such-clip",
                      workers=0)
    assert asked == [("lvdm-tests/no-such-clip", 10.0)]


def test_a_missing_captioning_model_fails_at_once(dataset, tmp_path, no_hub):
    with pytest.raises(FileNotFoundError, match="captioning model .*no-such-llava' does not exist"):
        caption_dataset(str(dataset), str(tmp_path / "out"), model=str(tmp_path / "no-such-llava"), workers=0)


def test_a_scorer_that_fails_on_every_sample_fails_the_stage(dataset, tmp_path, monkeypatch, capsys):
    from lvdm.cli import main

    def broken(self, clip):
        raise RuntimeError("flow exploded")

    monkeypatch.setattr(MotionScorer, "score", broken)
    with pytest.raises(StageFailedError, match="scorer 'motion' failed on all 3 samples; the first: motion: "
                                                "RuntimeError: flow exploded"):
        score_dataset(str(dataset), str(tmp_path / "out"), scorers=["rules", "motion"], workers=0)
    with pytest.raises(SystemExit) as exit_:
        main(["data", "score", "--source", str(dataset), "--out", str(tmp_path / "cli"), "--scorers", "[motion]",
              "--workers", "0"])
    assert "scorer 'motion' failed on all 3 samples" in str(exit_.value.code)
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_one_good_sample_keeps_the_stage_going(tmp_path):
    samples = [video_sample("good", panning(48, 64, 6, 1)),
               {**video_sample("bad", panning(48, 64, 6, 1)), "mp4": b"\x00\x00\x00\x18ftypisom" + b"\x00" * 40}]
    src = write_dataset(tmp_path / "raw", samples)
    summary = score_dataset(str(src), str(tmp_path / "out"), scorers=["motion"], workers=0)
    assert summary["errors"] == 1 and summary["samples"] == 2


def test_a_caption_server_that_refuses_everything_fails_the_stage(dataset, tmp_path, server):
    _, url = server
    StubVLM.mode = "bad_request"
    with pytest.raises(StageFailedError, match="captioning failed on all 3 samples; the first: caption: "
                                                "CaptionRequestError: .* refused the request: HTTP 400"):
        caption_dataset(str(dataset), str(tmp_path / "out"), model="m", backend="openai", base_url=url, workers=0)
    StubVLM.mode = "ok"


def test_the_up_front_load_is_released_when_workers_load_their_own(clip_dir, tmp_path):
    import torch

    from lvdm.curation.folder import release
    from lvdm.curation.scorers import AestheticScorer

    torch.save(torch.nn.Linear(16, 1).state_dict(), tmp_path / "head.pth")
    scorer = AestheticScorer(clip_dir, str(tmp_path / "head.pth"))
    scorer.load()
    assert scorer._loaded is not None and scorer._head is not None
    release(scorer)
    assert scorer._loaded is None and scorer._head is None and scorer.clip == clip_dir
