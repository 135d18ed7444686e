import numpy as np
import pytest
import torch

from conftest import image_sample, panning, texture, video_sample
from lvdm.curation.frames import evenly_spaced, load_clip_frames
from lvdm.curation.scorers import (SCORERS, AestheticScorer, ClipMatchScorer, DuplicateScorer, MotionScorer,
                                   OCRScorer, RulesScorer)
from lvdm.data.video import VideoDecodeError, encode_mp4


def decoded(scorer, sample, ext="mp4"):
    return load_clip_frames(sample[ext], ext, sample["key"], scorer.frame_indices, sample["json"], sample["txt"])


def test_registry_names_every_scorer():
    assert set(SCORERS) == {"motion", "ocr", "duplicates", "rules", "aesthetic", "clip_match"}
    assert all(cls.fields for cls in SCORERS.values())


def test_evenly_spaced():
    assert evenly_spaced(10, 2) == [2, 7]
    assert evenly_spaced(3, 8) == [0, 1, 2]
    assert evenly_spaced(0, 4) == []


@pytest.mark.parametrize("step", [2, 5])
def test_motion_of_a_translation_is_its_speed(step):
    scorer = MotionScorer(pairs=3)
    clip = decoded(scorer, video_sample("pan", panning(256, 320, 10, step)))
    assert clip.total == 10 and len(clip.frames) == 6  # only the measured pairs were kept
    assert scorer.score(clip)["motion"] == pytest.approx(step, rel=0.1)


def test_motion_is_in_units_of_the_reference_short_side():
    """The same pan at twice the resolution (twice the pixels per frame) scores the same."""
    scorer = MotionScorer(pairs=2)
    high = scorer.score(decoded(scorer, video_sample("hi", panning(512, 640, 6, 6))))["motion"]
    assert high == pytest.approx(3, rel=0.1)


def test_motion_of_a_still_is_zero():
    scorer = MotionScorer()
    still = np.repeat(texture(64, 64)[None], 6, axis=0)
    assert scorer.score(decoded(scorer, video_sample("still", still)))["motion"] < 0.05
    assert scorer.score(decoded(scorer, image_sample("img", texture(64, 64)), "png"))["motion"] == 0.0


def _text_frame(text, size=(270, 480)):
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size[::-1], (30, 60, 90))
    if text:
        ImageDraw.Draw(image).text((40, 100), text, fill=(255, 255, 255), font=ImageFont.load_default(size=40))
    return np.asarray(image)


def test_ocr_finds_rendered_text_and_nothing_on_a_blank_frame():
    scorer = OCRScorer(num_frames=2)
    text = scorer.score(decoded(scorer, video_sample("txt", np.stack([_text_frame("HELLO WORLD 2024")] * 4))))
    # the text's bounding box is ~380x30 px of 480x270 (8.8 %)
    assert 0.05 < text["ocr_area"] < 0.15 and text["ocr_boxes"] >= 1
    blank = scorer.score(decoded(scorer, video_sample("blank", np.stack([_text_frame("")] * 4))))
    assert blank == {"ocr_area": 0.0, "ocr_boxes": 0}


def test_duplicates_flag_a_reencoded_copy_not_a_different_clip():
    import cv2

    scorer = DuplicateScorer()
    original = panning(96, 128, 8, 2, seed=1)
    # a re-encode: rescaled, colour-shifted and compressed hard
    copy = np.stack([cv2.resize(f, (160, 120)) for f in original]).astype(np.int16) + 6
    samples = [video_sample("orig", original), video_sample("other", panning(96, 128, 8, 2, seed=2)),
               {**video_sample("copy", np.clip(copy, 0, 255).astype(np.uint8)),
                "mp4": encode_mp4(np.clip(copy, 0, 255).astype(np.uint8), crf=35)},
               video_sample("copy2", original)]
    rows = [scorer.score(decoded(scorer, s)) for s in samples]
    assert all(len(r["phash"]) == 4 for r in rows)
    result = scorer.finalize([s["key"] for s in samples], rows)
    assert [r["duplicate_of"] for r in result] == ["", "", "orig", "orig"]


def test_duplicates_banding_finds_every_pair_within_the_distance():
    """Against all-pairs comparison on random signatures with planted near-copies."""
    rng = np.random.default_rng(0)
    scorer = DuplicateScorer(num_frames=2, max_distance=5)  # 10 bits over 2 hashes
    base = [rng.integers(0, 2, 128) for _ in range(40)]
    sigs = base + [np.where(rng.random(128) < 0.05, 1 - b, b) for b in base[:20]]
    rows = [{"phash": [format(int("".join(map(str, s[i:i + 64])), 2), "016x") for i in (0, 64)]} for s in sigs]
    keys = [f"k{i}" for i in range(len(rows))]
    got = [r["duplicate_of"] for r in scorer.finalize(keys, rows)]
    kept: list[int] = []
    for i, s in enumerate(sigs):  # the brute-force reference
        match = next((j for j in kept if int(np.sum(s != sigs[j])) <= 10), None)
        assert got[i] == ("" if match is None else keys[match])
        if match is None:
            kept.append(i)
    assert sum(bool(g) for g in got) >= 15


def test_rules():
    scorer = RulesScorer(min_short_side=64, min_duration=1.0, min_fps=10, max_aspect=2.0)
    good = video_sample("good", np.zeros((16, 64, 96, 3), np.uint8), fps=12)
    assert scorer.score(decoded(scorer, good)) == {"rules_ok": True, "rules_failed": ""}
    bad = video_sample("bad", np.zeros((4, 32, 96, 3), np.uint8), fps=8)
    assert scorer.score(decoded(scorer, bad)) == {
        "rules_ok": False, "rules_failed": "min_short_side,min_duration,min_fps,max_aspect"}
    image = image_sample("img", np.zeros((64, 64, 3), np.uint8))  # no duration or fps checks for images
    assert scorer.score(decoded(scorer, image, "png"))["rules_ok"]


def test_bad_media_is_a_clear_error():
    with pytest.raises(VideoDecodeError, match="'junk'"):
        load_clip_frames(b"not a video at all", "mp4", "junk", lambda n: [0])
    big = video_sample("big", np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(VideoDecodeError, match="over the 1000-pixel limit"):
        load_clip_frames(big["mp4"], "mp4", "big", lambda n: [0], max_pixels=1000)


def _reference_clip(clip_dir, frames, texts=None):
    """Normalised image (and text) embeddings straight from transformers, no lvdm code."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        image = model.vision_model(pixel_values=processor(images=list(frames), return_tensors="pt")["pixel_values"])
        image = model.visual_projection(image.pooler_output).double()
        out = [image / image.norm(dim=-1, keepdim=True)]
        if texts:
            tokens = processor(text=texts, return_tensors="pt", padding=True)
            text = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            text = model.text_projection(text.pooler_output).double()
            out.append(text / text.norm(dim=-1, keepdim=True))
    return out


def test_aesthetic_is_the_linear_head_on_clip_embeddings(clip_dir, tmp_path):
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1)).eval()
    torch.save(head.state_dict(), tmp_path / "head.pth")
    sample = video_sample("v", panning(48, 64, 6, 1))
    scorer = AestheticScorer(clip=str(clip_dir), head=str(tmp_path / "head.pth"), num_frames=3)
    got = scorer.score_batch([decoded(scorer, sample)])[0]["aesthetic"]
    (embeddings,) = _reference_clip(clip_dir, panning(48, 64, 6, 1)[[1, 3, 5]])
    with torch.no_grad():
        expected = head.double()(embeddings).mean().item()
    assert got == pytest.approx(expected, abs=2e-3)  # frames went through an mp4
    with pytest.raises(FileNotFoundError, match="nohead"):
        AestheticScorer(clip=str(clip_dir), head=str(tmp_path / "nohead.pth")).score_batch([decoded(scorer, sample)])


def test_clip_match_is_the_caption_frames_cosine(clip_dir):
    frames = np.stack([texture(32, 32, seed=s) for s in range(4)])

    samples = [image_sample("a", frames[0], "a red square moving left"), image_sample("b", frames[1], "")]
    scorer = ClipMatchScorer(clip=str(clip_dir), num_frames=1)
    got = scorer.score_batch([decoded(scorer, s, "png") for s in samples])
    images, texts = _reference_clip(clip_dir, frames[:1], ["a red square moving left"])
    assert got[0]["clip_match"] == pytest.approx(float(images[0] @ texts[0]), rel=1e-5, abs=1e-6)
    assert got[1] == {"clip_match": None}


def test_a_container_that_overstates_its_length_is_sampled_from_the_frames_it_has():
    from lvdm.data.sample_media import encode_video, misstate_avi_frames

    video = panning(64, 80, 8, 2)
    lying = misstate_avi_frames(encode_video(video, "avi"), 5000)
    scorer = MotionScorer(pairs=2)
    clip = load_clip_frames(lying, "avi", "liar", scorer.frame_indices)
    assert clip.total == 8 and sorted(clip.frames) == scorer.frame_indices(8)
    assert scorer.score(clip)["motion"] == pytest.approx(2 * 256 / 64, rel=0.15)


def test_a_truncated_video_keeps_the_frames_that_decode():
    from lvdm.data.sample_media import encode_video

    data = encode_video(panning(64, 80, 24, 1), "mkv")  # a streamable container: the head still plays
    clip = load_clip_frames(data[: len(data) * 2 // 3], "mkv", "cut", lambda n: evenly_spaced(n, 4))
    assert 0 < len(clip.frames) <= 4 and all(i < clip.total for i in clip.frames)
    mp4 = video_sample("t", panning(64, 80, 24, 1))["mp4"]  # its index is at the end: nothing to read
    with pytest.raises(VideoDecodeError, match="'cut'"):
        load_clip_frames(mp4[: len(mp4) * 2 // 3], "mp4", "cut", lambda n: evenly_spaced(n, 4))
