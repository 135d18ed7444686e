"""`lvdm app` shown to others: uploads only (no server paths), limits per request, a bounded queue,
optional auth, and refusals as one-line messages (no tracebacks). Served on 127.0.0.1."""

import os
import threading

import httpx
import numpy as np
import pytest
from test_app import _free_port, checkpoint  # noqa: F401  (the tiny checkpoint fixture)

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

SMALL = {"max_seconds": 2.0, "max_size": 32, "max_steps": 3, "max_prompts": 2, "max_prompt_chars": 40}
GOOD = ("a red square", 1.0, 16, 16, 2, 3.0, 0)  # prompts, seconds, height, width, steps, guidance, seed


def _png(path, value=200, size=(16, 16)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)
    return path


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    """Gradio's upload folder for this test (GRADIO_TEMP_DIR), so nothing lands in the system's temp."""
    folder = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


@pytest.fixture
def generator(checkpoint, tmp_path):  # noqa: F811
    from lvdm.generation.app import Limits, VideoGenerator

    return VideoGenerator(str(checkpoint), out=str(tmp_path / "videos"), device="cpu", limits=Limits(**SMALL))


@pytest.fixture
def plain_generator(checkpoint, tmp_path):  # noqa: F811
    """A generator with the default limits (built as the code before the limits built it)."""
    from lvdm.generation.app import VideoGenerator

    return VideoGenerator(str(checkpoint), out=str(tmp_path / "videos"), device="cpu")


@pytest.fixture
def secret(tmp_path):
    """A server file no visitor should see: readable by its owner only."""
    path = _png(tmp_path / "private" / "secret.png")
    os.chmod(path, 0o600)
    return path


def _serve(page, **launch):
    port = _free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch)
    return f"http://127.0.0.1:{port}/"


def _run_fn(page):
    (fn,) = [f.fn for f in page.fns.values() if f.api_name == "generate"]
    return fn


def test_page_function_refuses_a_server_file_before_reading_it(plain_generator, uploads, secret, tmp_path):
    """The old page function read any path it was given: the secret became the first frame."""
    from lvdm.generation.app import build_app

    run = _run_fn(build_app(plain_generator))
    with pytest.raises(gradio.Error, match="uploaded through the page; a path on the server is refused"):
        run(*GOOD, str(secret), False)
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "link.png").symlink_to(secret)  # inside the upload folder, but pointing out of it
    with pytest.raises(gradio.Error, match="uploaded through the page"):
        run(*GOOD, str(uploads / "link.png"), False)
    with pytest.raises(gradio.Error, match="uploaded through the page"):
        run(*GOOD, str(uploads), False)  # the folder itself (a folder of images is read one per prompt)
    assert not list((tmp_path / "videos").rglob("*.mp4"))
    copies = [p for p in uploads.rglob("*") if not p.is_symlink() and p.is_file()]
    assert not [p for p in copies if p.read_bytes() == secret.read_bytes()]


def test_server_file_over_http_is_refused_and_an_upload_is_used(plain_generator, uploads, secret, tmp_path):
    from gradio_client import Client, handle_file

    """Over HTTP gradio (6.x) refuses a path that was not uploaded before the page sees it; the page's
    own check (above) is the second gate. (gradio_client given such a dict uploads the file from the
    client's own disk: on one machine that looks like a server read, but it is an upload.)"""
    from PIL import Image

    from lvdm.generation.app import build_app
    from lvdm.data.video import read_frames

    page = build_app(plain_generator)
    url = _serve(page, allowed_paths=[str(plain_generator.out)], max_file_size=4096)
    try:
        call = f"{url}gradio_api/call/generate"
        image = {"path": str(secret), "meta": {"_type": "gradio.FileData"}}
        event = httpx.post(call, json={"data": [*GOOD, image, False]}).json()["event_id"]
        assert "event: error" in httpx.get(f"{call}/{event}", timeout=120).text
        assert not list((tmp_path / "videos").rglob("*.mp4"))
        assert not [p for p in uploads.rglob("*.png") if p.read_bytes() == secret.read_bytes()]
        # a real upload (the client posts the file to /upload first) is accepted: it is the first frame
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        video, _, _ = client.predict(*GOOD, handle_file(str(_png(tmp_path / "grey.png", 90))), False,
                                     api_name="/generate")
        frames, _ = read_frames(video["video"] if isinstance(video, dict) else video)
        assert abs(frames[0].astype(float).mean() - 90) < 6
        noise = tmp_path / "noise.png"  # over max_file_size (--max_upload_mb): the upload is refused
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noise)
        assert noise.stat().st_size > 4096
        refused = httpx.post(f"{url}gradio_api/upload", files={"files": noise.open("rb")})  # past the client's check
        assert refused.status_code == 413 and not list(uploads.rglob("noise.png"))
    finally:
        page.close()


@pytest.mark.parametrize("change, message", [
    ({"seconds": 3.0}, "duration 3 s is over the limit of 2 s (--max_seconds)"),
    ({"seconds": float("nan")}, "duration must be a number; got nan"),
    ({"height": 48}, "height 48 is over the limit of 32 (--max_size)"),
    ({"width": 4096}, "width 4096 is over the limit of 32 (--max_size)"),
    ({"width": 10}, "width must be a positive multiple of 4; got 10"),
    ({"steps": 4}, "steps 4 is over the limit of 3 (--max_steps)"),
    ({"steps": 0}, "steps must be at least 1; got 0"),
    ({"prompts": "a\nb\nc"}, "3 prompt lines are over the limit of 2 (--max_prompts)"),
    ({"prompts": "x" * 41}, "a prompt of 41 characters is over the limit of 40 (--max_prompt_chars)"),
    ({"steps": 2.5}, "steps must be a whole number; got 2.5"),
    ({"seed": -1}, "seed must be at least 0; got -1"),
    ({"seed": 2**32}, "seed 4294967296 is over the limit of 4294967295"),
    ({"guidance": float("inf")}, "guidance must be a number; got inf"),
    ({"height": None}, "height must be a number; got None"),
    ({"prompts": None}, "write at least one prompt"),
])
def test_each_limit_is_refused_with_a_message_naming_it(generator, change, message):
    from lvdm.generation.app import build_app

    args = dict(zip(["prompts", "seconds", "height", "width", "steps", "guidance", "seed"], GOOD)) | change
    with pytest.raises(ValueError) as err:
        generator(*args.values())
    assert str(err.value) == message
    with pytest.raises(gradio.Error) as err:  # what the visitor sees on the page
        _run_fn(build_app(generator))(*args.values(), None, False)
    assert err.value.message == message


def test_a_large_image_is_refused_from_its_header(generator, uploads, tmp_path, monkeypatch):
    import lvdm.data.given
    from lvdm.generation.app import build_app

    big = _png(uploads / "upload" / "big.png", size=(64, 16))
    monkeypatch.setattr(lvdm.data.given, "read_image", pytest.fail)  # refused before the pixels are decoded
    with pytest.raises(gradio.Error) as err:
        _run_fn(build_app(generator))(*GOOD, str(big), False)
    assert err.value.message == "the image's height 64 is over the limit of 32 (--max_size)"


def test_refusals_reach_the_visitor_without_a_traceback(plain_generator, uploads, tmp_path, capfd):
    from gradio_client import Client

    from lvdm.generation.app import build_app

    page = build_app(plain_generator)
    url = _serve(page, allowed_paths=[str(plain_generator.out)])
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        for prompts, message in ((" \n", "write at least one prompt"), ("a\n" * 5, "over the limit of 4")):
            with pytest.raises(gradio_client.exceptions.AppError, match=message):
                client.predict(prompts, *GOOD[1:], None, False, api_name="/generate")
            assert "Traceback" not in "".join(capfd.readouterr())  # the old page printed one for each
    finally:
        page.close()


def test_duration_is_shown_rounded(plain_generator):
    from lvdm.generation.app import build_app

    plain_generator.fps = 12.0  # 4 frames at 12 fps: 1/3 s
    page = build_app(plain_generator)
    (duration,) = [b for b in page.blocks.values() if getattr(b, "label", None) == "duration (s)"]
    assert duration.value == 0.33 and "12 fps; rounded to a multiple of 2 frames (0.17 s)" in duration.info


def _blocking_generate(generator, monkeypatch):
    """Make the model's generate wait for ``release``; returns (entered, release, most at once)."""
    entered, release, state = threading.Semaphore(0), threading.Event(), {"now": 0, "most": 0}
    lock, real = threading.Lock(), generator.module.generate

    def generate(*args, **kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        entered.release()
        assert release.wait(60)
        with lock:
            state["now"] -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(generator.module, "generate", generate)
    return entered, release, state


def test_max_jobs_renders_one_request_at_a_time(generator, monkeypatch):
    entered, release, state = _blocking_generate(generator, monkeypatch)
    threads = [threading.Thread(target=generator, args=GOOD) for _ in range(3)]
    for t in threads:
        t.start()
    assert entered.acquire(timeout=60)  # one is rendering…
    threads[1].join(0.5)
    assert not entered.acquire(timeout=0.5) and state["now"] == 1  # …the others wait for the slot
    release.set()
    for t in threads:
        t.join(60)
    assert state["most"] == 1 and len(list(generator.out.rglob("*.mp4"))) == 3


def test_max_jobs_two_render_together(checkpoint, tmp_path, monkeypatch):  # noqa: F811
    from lvdm.generation.app import VideoGenerator

    generator = VideoGenerator(str(checkpoint), out=str(tmp_path / "videos"), device="cpu", max_jobs=2)
    both, real = threading.Barrier(2, timeout=60), generator.module.generate
    monkeypatch.setattr(generator.module, "generate", lambda *a, **kw: (both.wait(), real(*a, **kw))[1])
    threads = [threading.Thread(target=generator, args=GOOD) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not both.broken and len(list(generator.out.rglob("*.mp4"))) == 2


def test_limits_themselves_are_checked(generator):
    from lvdm.generation.app import Limits, VideoGenerator, build_app

    with pytest.raises(ValueError, match="max_size must be positive; got 0"):
        Limits(max_size=0)
    with pytest.raises(ValueError, match="max_jobs must be at least 1; got 0"):
        VideoGenerator("unused.ckpt", max_jobs=0)
    with pytest.raises(ValueError, match="max_queue must be at least 1; got 0"):
        build_app(generator, max_queue=0)


def test_queue_turns_away_requests_past_max_queue(generator, uploads, tmp_path, monkeypatch):
    from gradio_client import Client

    from lvdm.generation.app import build_app

    entered, release, _ = _blocking_generate(generator, monkeypatch)
    page = build_app(generator, max_queue=1)
    url = _serve(page, allowed_paths=[str(generator.out)])
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        running = client.submit(*GOOD, None, False, api_name="/generate")
        assert entered.acquire(timeout=60)
        waiting = client.submit(*GOOD, None, False, api_name="/generate")
        for _ in range(1200):  # until the second request waits in the queue
            if len(page._queue) == 1:
                break
            threading.Event().wait(0.05)
        assert len(page._queue) == 1
        with pytest.raises(Exception, match="Queue is full"):
            client.predict(*GOOD, None, False, api_name="/generate")
        skip = httpx.post(f"{url}gradio_api/run/generate", json={"data": [*GOOD, None, False]})  # the REST route
        assert skip.status_code == 404 and "join the queue" in skip.text  # would skip the queue and its limits
        release.set()
        assert len(running.result(timeout=120)[1]) == 1 and len(waiting.result(timeout=120)[1]) == 1
    finally:
        release.set()
        page.close()


def test_auth_is_required_when_set(generator, uploads, tmp_path):
    from gradio_client import Client

    from lvdm.generation.app import build_app

    page = build_app(generator)
    url = _serve(page, allowed_paths=[str(generator.out)], auth=[("ann", "s3cr:et")])
    try:
        call = f"{url}gradio_api/call/generate"
        assert httpx.post(call, json={"data": [*GOOD, None, False]}).status_code in (401, 403)
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, verbose=False, auth=("ann", "wrong"))
        client = Client(url, verbose=False, auth=("ann", "s3cr:et"), download_files=str(tmp_path / "downloads"))
        assert len(client.predict(*GOOD, None, False, api_name="/generate")[1]) == 1
    finally:
        page.close()


def test_read_auth(tmp_path):
    from lvdm.generation.app import read_auth

    users = tmp_path / "users.txt"
    users.write_text("# who may use the page\nann:s3cr:et\n\n  bob:two words  \n")
    assert read_auth("cy:pass", str(users)) == [("cy", "pass"), ("ann", "s3cr:et"), ("bob", "two words")]
    assert read_auth() == []
    users.write_text("ann:ok\nbob-hunter2\n")
    with pytest.raises(ValueError, match=r"users.txt line 2: expected user:password") as err:
        read_auth(None, str(users))
    assert "hunter2" not in str(err.value)
    users.write_text("# nobody\n")
    with pytest.raises(ValueError, match="holds no user:password line"):
        read_auth(None, str(users))


def test_app_passes_limits_queue_and_auth_to_gradio_and_never_prints_the_password(
        checkpoint, tmp_path, uploads, monkeypatch, capsys):  # noqa: F811
    from lvdm.cli import main

    launched = {}
    monkeypatch.setattr(gradio.Blocks, "launch", lambda page, **kw: launched.update(kw, page=page))
    users = tmp_path / "users.txt"
    users.write_text("ann:hunter2\n")
    main(["app", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "videos"), "--device", "cpu",
          "--max_steps", "7", "--max_jobs", "2", "--max_queue", "5", "--max_upload_mb", "3",
          "--auth_file", str(users), "--auth", "bob:pa:ss word"])
    page = launched.pop("page")
    assert launched["auth"] == [("bob", "pa:ss word"), ("ann", "hunter2")]
    assert launched["max_file_size"] == 3 * 1024 * 1024
    assert page._queue.max_size == 5 and not page.api_open
    (fn,) = [f for f in page.fns.values() if f.api_name == "generate"]
    assert fn.concurrency_limit == 2
    printed = capsys.readouterr().out
    assert "at most 4 prompts of 500 characters, 8 s, 512 pixels a side, 7 steps" in printed
    assert "a password is asked (2 user(s))" in printed and "hunter2" not in printed and "pa:ss" not in printed


def test_app_help_lists_the_limits(capsys):
    from lvdm.cli import main

    with pytest.raises(SystemExit):
        main(["app", "--help"])
    text = capsys.readouterr().out
    for flag in ("--max_seconds", "--max_size", "--max_steps", "--max_prompts", "--max_jobs", "--max_queue",
                 "--auth", "--auth_file"):
        assert flag in text
