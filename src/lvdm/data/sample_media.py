"""Small media files for tests and benchmarks: videos in several containers and codecs, images.

Everything is built from numpy frames with PyAV (and Pillow for still images), so tests need
no media files on disk and no network."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
from PIL import Image

# container format → (codec, pixel format); odd sizes need a 4:4:4 or paletted format
CODECS = {
    "mp4": ("libx264", "yuv444p"),
    "webm": ("libvpx-vp9", "yuv444p"),
    "mkv": ("mpeg4", "yuv420p"),
    "avi": ("mpeg4", "yuv420p"),
    "mov": ("libx264", "yuv444p"),
    "gif": ("gif", "rgb8"),
}
_FORMATS = {"mp4": "mp4", "webm": "webm", "mkv": "matroska", "avi": "avi", "mov": "mov", "gif": "gif"}


def frames(t: int, h: int, w: int, seed: int = 0, cuts: tuple[int, ...] = ()) -> np.ndarray:
    """``[t, h, w, 3]`` uint8: a bright square moving right over a flat background whose
    colour changes at each frame index in ``cuts`` (scene cuts a detector must find)."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 200, size=(len(cuts) + 1, 3))
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        scene = sum(i >= c for c in cuts)
        out[i] = palette[scene]
        side = max(2, min(h, w) // 4)
        x = (2 * i) % max(1, w - side)
        out[i, h // 3 : h // 3 + side, x : x + side] = 255
    return out


def encode_video(video: np.ndarray, ext: str = "mp4", fps: float = 8) -> bytes:
    """Encode ``[t, h, w, 3]`` uint8 frames into the container ``ext`` with its test codec."""
    codec, pix_fmt = CODECS[ext]
    if pix_fmt == "yuv420p" and (video.shape[1] % 2 or video.shape[2] % 2):
        raise ValueError(f"{codec} in {ext} needs even sizes, got {video.shape[1:3]}")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=_FORMATS[ext]) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = pix_fmt
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def encode_image(frame: np.ndarray, ext: str = "png") -> bytes:
    """One ``[h, w, 3]`` uint8 frame as ``png``, ``jpg`` or ``webp`` bytes."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(ext, ext.upper()))
    return buffer.getvalue()


def encode_audio_only(seconds: float = 0.5, ext: str = "mp4") -> bytes:
    """A container holding one AAC audio stream and no video (a sine tone)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=_FORMATS[ext]) as container:
        _mux_tone(container, container.add_stream("aac", rate=_AUDIO_RATE), seconds)
    return buffer.getvalue()


_AUDIO_RATE = 16000


def _mux_tone(container, stream, seconds: float) -> None:
    """Encodes ``seconds`` of a mono sine tone into the AAC ``stream`` of ``container``, then flushes it."""
    samples = np.sin(np.arange(int(seconds * _AUDIO_RATE)) * 0.05).astype(np.float32)
    for start in range(0, len(samples), 1024):
        frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
        frame.sample_rate = _AUDIO_RATE
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def encode_video_with_audio(video: np.ndarray, ext: str = "mkv", audio_seconds: float = 2.0, fps: float = 8) -> bytes:
    """``video`` (as :func:`encode_video`) plus an AAC track of ``audio_seconds`` in one container."""
    codec, pix_fmt = CODECS[ext]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=_FORMATS[ext]) as container:
        vstream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        vstream.height, vstream.width = video.shape[1:3]
        vstream.pix_fmt = pix_fmt
        astream = container.add_stream("aac", rate=_AUDIO_RATE)
        for frame in video:
            container.mux(vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(vstream.encode())
        _mux_tone(container, astream, audio_seconds)
    return buffer.getvalue()


def misstate_avi_frames(data: bytes, frames: int) -> bytes:
    """An AVI whose headers (``avih`` total frames, ``strh`` length) claim ``frames`` frames."""
    out = bytearray(data)
    avih = out.index(b"avih")
    out[avih + 8 + 16 : avih + 8 + 20] = frames.to_bytes(4, "little")
    strh = out.index(b"strh")
    out[strh + 8 + 32 : strh + 8 + 36] = frames.to_bytes(4, "little")
    return bytes(out)
