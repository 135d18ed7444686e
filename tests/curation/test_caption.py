import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import StubVLM as _Stub
from conftest import image_sample, panning, texture, video_sample, write_dataset
from lvdm.curation.caption import caption_dataset
from lvdm.curation.captioners import DEFAULT_PROMPT, OpenAICaptioner, TransformersCaptioner
from lvdm.curation.folder import read_samples
from lvdm.curation.frames import load_clip_frames

WORDS = "you are shown frames taken in order from one video describe a red square moving left blue circle".split()
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    """A tiny random LLaVA (CLIP vision tower + Llama) with its processor, saved with save_pretrained."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    torch.manual_seed(0)
    vocab = tok.get_vocab_size()
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_index=tok.token_to_id("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1, projector_hidden_act="gelu")
    path = tmp_path_factory.mktemp("tiny_llava")
    LlavaForConditionalGeneration(config).eval().save_pretrained(path)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    samples = [video_sample("pan", panning(48, 64, 6, 1, seed=1), "original one"),
               image_sample("img", texture(40, 40, seed=2), "original two"),
               {**video_sample("broken", panning(48, 64, 6, 1)), "mp4": b"\x00\x00\x00\x18ftypisom" + b"\x00" * 40},
               video_sample("pan2", panning(48, 64, 6, 2, seed=3), "original three")]
    return write_dataset(tmp_path_factory.mktemp("raw"), samples, per_shard=3), samples


def test_transformers_captioner_matches_a_direct_generate(llava_dir, dataset):
    """The tiny LLaVA reloaded through the real loader; captions equal a hand-built generate call."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    _, samples = dataset
    captioner = TransformersCaptioner(str(llava_dir), num_frames=2, max_new_tokens=6, batch_size=2)
    clip = load_clip_frames(samples[0]["mp4"], "mp4", "pan", captioner.frame_indices, caption="x")
    (caption,) = captioner.caption_batch([clip])
    model = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    processor = AutoProcessor.from_pretrained(llava_dir)
    text = "user: <image><image>" + DEFAULT_PROMPT.replace("{frames}", "2") + "\nassistant:"
    frames = [clip.frames[i] for i in sorted(clip.frames)]
    inputs = processor(images=[frames], text=[text], return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_index).sum() == 2 * 16  # 2 frames x 16 patches
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert caption == processor.decode(ids, skip_special_tokens=True).strip() and caption


def test_caption_stage_writes_the_field_and_keeps_the_original(llava_dir, dataset, tmp_path):
    src, samples = dataset
    summary = caption_dataset(str(src), str(tmp_path / "out"), model=str(llava_dir), num_frames=2,
                              max_new_tokens=5, batch_size=2, workers=0)
    assert summary["samples"] == 4 and summary["captioned"] == 3 and summary["errors"] == 1
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet").set_index("key")
    assert manifest.loc["pan", "caption_vlm"] and manifest.loc["pan", "caption_vlm_error"] == ""
    assert pd.isna(manifest.loc["broken", "caption_vlm"]) and "decode" in manifest.loc["broken", "caption_vlm_error"]
    entries = read_samples(str(tmp_path / "out" / "shard-000000.tar"), ["pan"])["pan"]
    assert entries["txt"] == b"original one" and entries["mp4"] == samples[0]["mp4"]
    assert json.loads(entries["json"])["caption_vlm"] == manifest.loc["pan", "caption_vlm"]


def test_openai_backend_against_a_stub_server(server, dataset, tmp_path, monkeypatch):
    httpd, url = server
    _Stub.mode = "ok"
    monkeypatch.setenv("LVDM_TEST_KEY", "secret")
    src, _ = dataset
    summary = caption_dataset(str(src), str(tmp_path / "out"), model="stub-vlm", backend="openai", base_url=url,
                              api_key_env="LVDM_TEST_KEY", num_frames=3, concurrency=2, workers=0)
    assert summary["captioned"] == 3 and summary["errors"] == 1
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet").set_index("key")
    assert manifest.loc["pan", "caption_vlm"] == "3 frames of stub-vlm"
    assert manifest.loc["img", "caption_vlm"] == "1 frames of stub-vlm"  # an image is one frame
    assert all(auth == "Bearer secret" for _, auth in _Stub.calls) and len(_Stub.calls) == 3
    texts = sorted(body["messages"][0]["content"][0]["text"] for body, _ in _Stub.calls)
    assert texts[-1].startswith("You are shown 3 frame(s)") and "{" not in texts[-1]


@pytest.mark.parametrize("mode, calls, message", [("fail", 3, "failed 3 times; last: HTTP 503"),
                                                   ("slow", 3, "failed 3 times; last: TimeoutError"),
                                                   ("bad_request", 1, "refused the request: HTTP 400")])
def test_openai_failures_are_retried_then_recorded(server, dataset, mode, calls, message):
    httpd, url = server
    _Stub.mode = mode
    _, samples = dataset
    captioner = OpenAICaptioner(url, "stub", retries=2, timeout=0.3, backoff=0.01, num_frames=1)
    clip = load_clip_frames(samples[0]["mp4"], "mp4", "pan", captioner.frame_indices)
    start = time.monotonic()
    (result,) = captioner.caption_batch([clip])
    assert isinstance(result, Exception) and message in str(result)
    assert len(_Stub.calls) == calls and time.monotonic() - start < 5


def test_caption_rejects_bad_options(dataset, tmp_path):
    src, _ = dataset
    with pytest.raises(ValueError, match="base_url"):
        caption_dataset(str(src), str(tmp_path / "o"), model="m", backend="openai")
    with pytest.raises(ValueError, match="unknown caption backend"):
        caption_dataset(str(src), str(tmp_path / "o"), model="m", backend="gemini")


def test_cli_data_caption(server, dataset, tmp_path):
    from lvdm.cli import main

    _, url = server
    _Stub.mode = "ok"
    src, _ = dataset
    main(["data", "caption", "--source", str(src), "--out", str(tmp_path / "o"), "--model", "stub",
          "--backend", "openai", "--base_url", url, "--field", "vlm", "--num_frames", "2", "--workers", "0"])
    manifest = pd.read_parquet(tmp_path / "o" / "manifest.parquet").set_index("key")
    assert manifest.loc["pan2", "vlm"] == "2 frames of stub"


def test_reader_trains_on_the_chosen_caption_field(server, dataset, tmp_path):
    from lvdm.data.datamodule import VideoDataModule, sample_caption

    _, url = server
    _Stub.mode = "ok"
    src, _ = dataset
    caption_dataset(str(src), str(tmp_path / "o"), model="stub", backend="openai", base_url=url, num_frames=2,
                    workers=0)
    raw = {**read_samples(str(tmp_path / "o" / "shard-000000.tar"), ["pan"])["pan"], "__key__": "pan"}
    module = VideoDataModule(str(tmp_path / "o"), num_frames=2, resolution=16, caption_field="caption_vlm")
    batch = module.decode_sample(raw, np.random.default_rng(0), random_start=False)
    assert batch["caption"] == "2 frames of stub" and batch["video"].shape == (3, 2, 16, 16)
    assert sample_caption(raw) == "original one"  # the default stays key.txt
    failed = {**raw, "json": json.dumps({"caption_vlm": None}).encode()}
    assert sample_caption(failed, "caption_vlm") == "original one"  # a failed caption falls back
    with pytest.raises(ValueError, match="'pan'"):
        sample_caption({**raw, "json": b"{not json"}, "caption_vlm")


def test_local_and_ray_captions_are_identical(server, dataset, tmp_path, local_ray):
    _, url = server
    _Stub.mode = "ok"
    src, _ = dataset
    for engine in ("local", "ray"):
        caption_dataset(str(src), str(tmp_path / engine), model="stub", backend="openai", base_url=url, num_frames=2,
                        engine=engine, workers=2, batch_size=1, concurrency=1)
    local = pd.read_parquet(tmp_path / "local" / "manifest.parquet")
    pd.testing.assert_frame_equal(local, pd.read_parquet(tmp_path / "ray" / "manifest.parquet"))
    assert local["caption_vlm"].notna().sum() == 3


def test_timeout_bounds_the_whole_request_not_each_read(server, dataset):
    """A server that answers a byte every 0.1 s (~8 s in all) never lets one read wait 1 s;
    the request still ends at timeout=1."""
    _, url = server
    _Stub.mode = "trickle"
    _, samples = dataset
    captioner = OpenAICaptioner(url, "stub", retries=0, timeout=1.0, num_frames=1)
    clip = load_clip_frames(samples[0]["mp4"], "mp4", "pan", captioner.frame_indices)
    (result,) = captioner.caption_batch([clip])
    assert isinstance(result, Exception) and "TimeoutError: no complete answer within timeout=1.0 s" in str(result)
    _Stub.mode = "ok"


def test_credentials_are_sent_but_never_written(server, dataset, tmp_path, monkeypatch):
    import base64

    _, url = server
    secret_url = url.replace("http://", "http://alice:S3cr%40t@")
    src, _ = dataset
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _Stub.mode = "fail_images"  # the image's request fails: its error, naming the endpoint, is written
    summary = caption_dataset(str(src), str(tmp_path / "out"), model="stub", backend="openai", base_url=secret_url,
                              retries=0, workers=0)
    assert summary["captioned"] == 2
    assert {auth for _, auth in _Stub.calls} == {"Basic " + base64.b64encode(b"alice:S3cr@t").decode()}
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet").set_index("key")
    assert manifest.loc["img", "caption_vlm_error"].startswith("caption: CaptionRequestError: http://***@127.0.0.1")
    for path in (tmp_path / "out").iterdir():  # shards (json), manifest, rejects
        data = path.read_bytes()
        assert b"S3cr" not in data and b"alice" not in data, path

    monkeypatch.setenv("LVDM_TEST_KEY", "sk-very-secret")
    _Stub.mode = "echo_auth"  # a server quoting the API key back in its error
    with pytest.raises(ValueError, match="captioning failed on all") as failure:
        caption_dataset(str(src), str(tmp_path / "echo"), model="stub", backend="openai", base_url=secret_url,
                        api_key_env="LVDM_TEST_KEY", retries=0, workers=0)
    assert "sk-very-secret" not in str(failure.value) and "S3cr" not in str(failure.value)
    assert "bad credentials: Bearer ***" in str(failure.value)
    _Stub.mode = "ok"
