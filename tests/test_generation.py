"""One generator behind `lvdm sample` and `lvdm app`: a request is checked by one set of rules,
before the checkpoint is loaded, and both write the same video for the same request."""

import numpy as np
import pytest
import torch
from PIL import Image

from lvdm.checkpoints.load import build_module
from lvdm.data.video import read_frames
from lvdm.diffusion.guidance import GuidanceSchedule
from lvdm.generation import Generator, Limits, Request
from lvdm.generation.generator import Given
from lvdm.generation.app import VideoGenerator
from lvdm.generation.sample import sample


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_hparams):
    torch.manual_seed(0)
    hparams = tiny_hparams(sample_shape=[4, 16, 16], fps=4)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    torch.save({"state_dict": build_module(hparams).state_dict(), "hyper_parameters": hparams, "global_step": 3,
                "callbacks": {}}, path)
    return path


def test_loop_without_an_image_is_one_rule_for_the_cli_and_the_app(checkpoint, tmp_path):
    """The rule was written three times, with three messages; now the CLI and the page say the same."""
    message = "a loop starts and ends on an image: give one (--image)"
    with pytest.raises(ValueError) as from_request:
        Request(["a red square"], loop=True)
    with pytest.raises(ValueError) as from_cli:
        sample(str(tmp_path / "not_loaded.ckpt"), prompts=["a red square"], loop=True, out=str(tmp_path / "out"))
    with pytest.raises(ValueError) as from_app:
        VideoGenerator(str(checkpoint), out=str(tmp_path / "app"), device="cpu")("a red square", 1.0, 16, 16, 2,
                                                                                    3.0, 0, loop=True)
    assert str(from_request.value) == str(from_cli.value) == str(from_app.value) == message


@pytest.mark.parametrize("change, message", [
    ({"num_frames": 0}, "num_frames must be at least 1; got 0"),  # was the model's frame count, silently
    ({"height": 0, "width": 16}, "height must be positive; got 0"),  # was the model's height, silently
    ({"steps": 0}, "steps must be at least 1; got 0"),
    ({"guidance": -1.0}, "guidance must be at least 0; got -1"),
    ({"guidance": float("nan")}, "guidance must be a number; got nan"),
    ({"seed": 2**32}, "seed 4294967296 is over the limit of 4294967295"),
])
def test_sample_checks_the_numbers_before_loading(tmp_path, change, message):
    """The app checked these; `lvdm sample` loaded the checkpoint first (here: one that does not
    exist) and then used a default or failed inside the model."""
    with pytest.raises(ValueError) as err:
        sample(str(tmp_path / "not_loaded.ckpt"), prompts=["a red square"], out=str(tmp_path / "out"), **change)
    assert str(err.value) == message


def test_limits_bound_a_request_and_require_its_numbers():
    limits = Limits(max_size=32, max_steps=3)
    assert Request(["a"], 4, 16, 16, 2, 3.0, 0, limits=limits).steps == 2
    with pytest.raises(ValueError, match=r"^steps must be a number; got None$"):  # the model's default may be over it
        Request(["a"], 4, 16, 16, None, 3.0, 0, limits=limits)
    with pytest.raises(ValueError, match=r"^steps 4 is over the limit of 3 \(--max_steps\)$"):
        Request(["a"], 4, 16, 16, 4, 3.0, 0, limits=limits)
    assert Request(["a"]).steps is None  # without limits: the model's default


def test_sample_and_the_app_write_the_same_videos(checkpoint, tmp_path):
    ramp = np.zeros((8, 12, 3), dtype=np.uint8)
    ramp[..., 0] = np.linspace(40, 200, 12, dtype=np.uint8)[None]
    Image.fromarray(ramp).save(tmp_path / "first.png")
    page = VideoGenerator(str(checkpoint), out=str(tmp_path / "app"), device="cpu")
    for image in (None, str(tmp_path / "first.png")):
        out = tmp_path / f"cli_{image is not None}"
        written = sample(str(checkpoint), prompts=["a red square", "a blue circle"], out=str(out), num_frames=4,
                         height=16, width=12, steps=2, guidance=3.0, seed=5, batch_size=1, device="cpu", image=image)
        served = page("a red square\na blue circle", 1.0, 16, 12, 2, 3.0, 5, image=image)
        assert [p.rsplit("/", 1)[1] for p in written] == [p.name for p in served]
        assert (out / "prompts.txt").read_text() == "a red square\na blue circle\n"
        for ours, theirs in zip(written, served):
            assert (read_frames(ours)[0] == read_frames(theirs)[0]).all()


def test_generator_writes_a_continuation(checkpoint, tmp_path):
    generator = Generator(str(checkpoint), device="cpu")
    start = generator.module.generate(["a red square"], num_steps=1, seed=1)
    from lvdm.generation import save_videos

    (clip,) = save_videos(start, ["start"], tmp_path / "start", fps=4)
    (path,) = generator.write(Request(["a red square"], steps=1, video=str(clip), extend=4), tmp_path / "out")
    frames, fps = read_frames(path)
    assert frames.shape == (8, 16, 16, 3) and fps == 4  # the 4 given frames, then 4 new ones


@pytest.fixture(scope="module")
def lively_checkpoint(tmp_path_factory, tiny_hparams):
    """The tiny model with every weight random (a fresh DiT's zero-initialised output layer
    predicts zero whatever the prompt, so guidance would change nothing)."""
    torch.manual_seed(0)
    hparams = tiny_hparams(sample_shape=[4, 16, 16], fps=4)
    module = build_module(hparams)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, 0.3)
    path = tmp_path_factory.mktemp("lively") / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, "global_step": 3, "callbacks": {}},
               path)
    return path


def test_guidance_schedule_flags_reach_the_sampler(lively_checkpoint, tmp_path):
    """`lvdm sample --guidance_interval` travels through the Request to `generate`: an interval
    that no step's noise level falls in samples exactly what no guidance samples; the default
    schedule samples exactly what the module samples without one."""
    common = dict(prompts=["a red square"], num_frames=4, height=16, width=16, steps=2, seed=1, device="cpu")
    checkpoint = str(lively_checkpoint)
    never = sample(checkpoint, out=str(tmp_path / "never"), guidance=4.0, guidance_interval=(0.0, 0.0), **common)
    unguided = sample(checkpoint, out=str(tmp_path / "unguided"), guidance=1.0, **common)
    guided = sample(checkpoint, out=str(tmp_path / "guided"), guidance=4.0, **common)
    assert (read_frames(never[0])[0] == read_frames(unguided[0])[0]).all()
    assert not (read_frames(guided[0])[0] == read_frames(unguided[0])[0]).all()
    module = Generator(checkpoint, device="cpu").module
    plain = module.generate(["a red square"], num_steps=2, guidance_scale=4.0, seed=1)
    assert torch.equal(module.generate(["a red square"], num_steps=2, guidance_scale=4.0, seed=1,
                                       guidance_schedule=GuidanceSchedule()), plain)
    zero_star = module.generate(["a red square"], num_steps=2, guidance_scale=4.0, seed=1,
                                guidance_schedule=GuidanceSchedule(method="cfg_zero_star"))
    assert zero_star.shape == plain.shape and not torch.equal(zero_star, plain)


@pytest.mark.parametrize("change, message", [
    ({"guidance_interval": (0.9, 0.1)},
     "guidance interval (lo, hi) must have 0 <= lo <= hi <= 1 (noise levels), got (0.9, 0.1)"),
    ({"zero_init_steps": -2}, "zero_init_steps must be a whole number >= 0, got -2"),
    ({"guidance_method": "apg", "apg_momentum": -1.0}, "apg_momentum must be in (-1, 1) (0: none), got -1.0"),
])
def test_sample_checks_the_guidance_schedule_before_loading(tmp_path, change, message):
    with pytest.raises(ValueError) as err:
        sample(str(tmp_path / "not_loaded.ckpt"), prompts=["a red square"], out=str(tmp_path / "out"), **change)
    assert str(err.value) == message


def test_negative_prompt_reaches_generate_through_sample(lively_checkpoint, tmp_path):
    """`lvdm sample --negative_prompt` travels through the Request to `generate` and `extend`."""
    checkpoint = str(lively_checkpoint)
    generator = Generator(checkpoint, device="cpu")
    request = Request(["a red square"], 4, 16, 16, 2, 4.0, 1, negative_prompt="a blue circle")
    rendered = generator.render(request, Given(), 0, 1)
    expected = generator.module.generate(["a red square"], 4, 16, 16, num_steps=2, guidance_scale=4.0, seed=1,
                                         negative_prompt="a blue circle")
    assert torch.equal(rendered, expected)
    assert not torch.equal(rendered, generator.module.generate(["a red square"], 4, 16, 16, num_steps=2,
                                                               guidance_scale=4.0, seed=1))
    seen = []
    generator.module.extend = lambda *args, **kw: seen.append(kw["negative_prompt"]) or rendered
    generator.render(Request(["a"], video="start.mp4", extend=2, negative_prompt="blurry"),
                     Given(clip=torch.zeros(1, 3, 2, 16, 16)), 0, 1)
    assert seen == ["blurry"]
    common = dict(prompts=["a red square"], num_frames=4, height=16, width=16, steps=2, guidance=4.0, seed=1,
                  device="cpu")
    (negative,) = sample(checkpoint, out=str(tmp_path / "negative"), negative_prompt="a blue circle", **common)
    (plain,) = sample(checkpoint, out=str(tmp_path / "plain"), **common)
    assert not (read_frames(negative)[0] == read_frames(plain)[0]).all()


@pytest.mark.parametrize("change, message", [
    ({"class_labels": [3], "prompts": []},
     "--negative_prompt is a caption for text guidance; a class-conditional model (--class_label) has none"),
    ({"negative_prompt": "x" * 9, "limits": Limits(max_prompt_chars=8)},
     "a negative prompt of 9 characters is over the limit of 8 (--max_prompt_chars)"),
    ({"negative_prompt": 3}, "negative_prompt must be text; got 3"),
])
def test_request_checks_the_negative_prompt(change, message):
    kwargs = dict(prompts=["a"], num_frames=4, height=16, width=16, steps=2, guidance=3.0, negative_prompt="blurry")
    with pytest.raises(ValueError) as err:
        Request(**{**kwargs, **change})
    assert str(err.value) == message
