"""Fixtures of the curation tests: small media and dataset folders built here, a tiny CLIP."""

import importlib.util
import io
import json
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lvdm.data.video import encode_mp4

# the tiny random CLIP of the metric tests (one definition, shared)
_spec = importlib.util.spec_from_file_location("_metrics_conftest", Path(__file__).parents[1] / "metrics" / "conftest.py")
_metrics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_metrics)
clip_dir = _metrics.clip_dir


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray (2 CPUs) for every Ray test; its workers can import the test modules."""
    ray = pytest.importorskip("ray")
    import os

    path = os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def texture(height, width, seed=0, blur=2.0):
    """Smooth random RGB texture (optical flow and hashes need structure, not flat colour)."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 255, (height, width, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), blur) * 3 - 255, 0, 255).astype(np.uint8)


def panning(height, width, frames, step, seed=0):
    """Frames of a window sliding ``step`` pixels right per frame over a texture."""
    canvas = texture(height, width + step * frames, seed)
    return np.stack([canvas[:, step * t : step * t + width] for t in range(frames)])


def write_dataset(folder, samples, per_shard=3):
    """A dataset folder (shards, manifest.parquet, rejects.csv) from dicts with ``key``, one
    media extension, ``txt`` and ``json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, len(samples), per_shard):
        shard = f"shard-{start // per_shard:06d}.tar"
        with tarfile.open(folder / shard, "w") as tar:
            for sample in samples[start : start + per_shard]:
                for ext, value in sample.items():
                    if ext == "key":
                        continue
                    data = json.dumps(value).encode() if ext == "json" else value.encode() if ext == "txt" else value
                    info = tarfile.TarInfo(f"{sample['key']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                rows.append({"key": sample["key"], "shard": shard,
                             **{k: v for k, v in sample["json"].items() if isinstance(v, (int, float, str, bool))}})
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet", index=False)
    (folder / "rejects.csv").write_text("path,reason\nbroken.mp4,cannot open\n")
    return folder


def video_sample(key, frames, caption="", fps=8, **meta):
    t, h, w = frames.shape[:3]
    return {"key": key, "mp4": encode_mp4(frames, fps=fps), "txt": caption,
            "json": {"source": f"{key}.mp4", "kind": "video", "codec": "h264", "fps": fps, "frames": t,
                     "width": w, "height": h, "duration": t / fps, "aspect": w / h, **meta}}


def image_sample(key, image, caption=""):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    h, w = image.shape[:2]
    return {"key": key, "png": buffer.getvalue(), "txt": caption,
            "json": {"source": f"{key}.png", "kind": "image", "fps": 0, "frames": 1, "width": w, "height": h,
                     "duration": 0, "aspect": w / h}}


class StubVLM(BaseHTTPRequestHandler):
    """An OpenAI-compatible stub: the mode decides how it answers."""

    mode = "ok"
    calls: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append((body, self.headers.get("Authorization")))
        if self.mode == "fail":
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        if self.mode == "bad_request":
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b"no such model")
            return
        images = sum(part["type"] == "image_url" for part in body["messages"][0]["content"])
        if self.mode == "fail_images" and images == 1:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"no images today")
            return
        if self.mode == "echo_auth":  # a careless server that quotes the credentials it got
            self.send_response(401)
            self.end_headers()
            self.wfile.write(f"bad credentials: {self.headers.get('Authorization')}".encode())
            return
        if self.mode == "slow":
            time.sleep(1.0)
        answer = {"choices": [{"message": {"role": "assistant", "content": f" {images} frames of {body['model']} "}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.mode != "trickle":
            self.wfile.write(data)
            return
        try:  # one byte every 0.1 s: each read is quick, the whole answer takes seconds
            for byte in data:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:  # the client gave up
            pass


@pytest.fixture()
def server():
    StubVLM.calls = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StubVLM)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def vlm_url(monkeypatch):
    """The stub VLM serving on 127.0.0.1 (answers "<n> frames of <model>"), with an API key set."""
    StubVLM.mode, StubVLM.calls = "ok", []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StubVLM)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()
