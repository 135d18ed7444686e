"""Video CLIPScore with a tiny random CLIP saved and reloaded through the real loading code."""

import pytest
import torch
from torchmetrics.multimodal.clip_score import CLIPScore

from lvdm.metrics.clipscore import VideoCLIPScore, load_clip

PROMPTS = ["a red square moving left", "a blue circle moving up", "a green triangle moving down"]  # in the tiny vocabulary


def test_features_are_the_clip_embeddings(clip_dir):
    """The adapter's features are CLIPModel.forward's image_embeds / text_embeds."""
    model, processor = load_clip(str(clip_dir))
    inputs = processor(text=PROMPTS, images=list(torch.randint(0, 256, (3, 3, 32, 32))), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.model(**inputs)
        image = model.get_image_features(inputs["pixel_values"])
        text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
    # forward() returns them L2-normalised
    assert torch.allclose(image / image.norm(dim=-1, keepdim=True), out.image_embeds, rtol=1e-5, atol=1e-6)  # unit norm
    assert torch.allclose(text / text.norm(dim=-1, keepdim=True), out.text_embeds, rtol=1e-5, atol=1e-6)


def test_single_frame_video_equals_torchmetrics_on_the_image(clip_dir):
    torch.manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 40, 48), dtype=torch.uint8)  # processor resizes + crops
    reference = CLIPScore(model_name_or_path=lambda: load_clip(str(clip_dir)))
    reference.update(list(images), PROMPTS)
    ours = VideoCLIPScore(pretrained=str(clip_dir))
    ours.update(images.unsqueeze(2), PROMPTS)  # [B, 3, 1, H, W]
    assert ours.compute().item() == pytest.approx(reference.compute().item(), rel=1e-5)


def test_video_score_is_mean_over_frames(clip_dir):
    torch.manual_seed(2)
    videos = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    ours = VideoCLIPScore(pretrained=str(clip_dir))
    ours.update(videos, PROMPTS[:2])
    frames = ((videos + 1) * 127.5).round().to(torch.uint8)
    per_video = []
    for video, prompt in zip(frames, PROMPTS[:2]):
        per_frame = []
        for t in range(4):
            metric = CLIPScore(model_name_or_path=lambda: load_clip(str(clip_dir)))
            metric.update(video[:, t], prompt)
            per_frame.append(metric.score.item())  # unclamped score of this one frame
        per_video.append(sum(per_frame) / 4)
    expected = max(sum(per_video) / 2, 0.0)
    assert ours.compute().item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_bad_inputs(clip_dir, tmp_path):
    metric = VideoCLIPScore(pretrained=str(clip_dir))
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        metric.update(torch.zeros(2, 3, 2, 32, 32), ["one"])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metric.update(torch.full((1, 3, 2, 32, 32), 3.0), ["one"])
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        metric.update(torch.zeros(1, 2, 32, 32, 3), ["one"])
    with pytest.raises(FileNotFoundError, match="no_clip"):
        VideoCLIPScore(pretrained=str(tmp_path / "no_clip"))
