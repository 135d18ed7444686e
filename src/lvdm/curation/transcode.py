"""Re-encode stretches of a video as H.264 mp4, one frame in memory at a time.

Used by ``lvdm data ingest --reencode`` (whole videos, size capped) and ``lvdm data split``
(one clip per scene, all clips of a video from one decoding pass). Frames stream from the
decoder to the encoders, so memory does not grow with the video's length, and decoding stops
after the last frame asked for.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av

__all__ = ["Encoded", "fit_size", "transcode_mp4", "cut_segments"]


@dataclass(frozen=True)
class Encoded:
    """One encoded stretch: mp4 ``data``, ``frames`` written, ``width``, ``height``, ``fps``."""

    data: bytes
    frames: int
    width: int
    height: int
    fps: float


def fit_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """``(width, height)`` scaled down (never up) so the longer side is at most ``max_size``,
    each rounded down to even (H.264 4:2:0 needs even sizes), at least 2."""
    scale = min(1.0, max_size / max(width, height)) if max_size else 1.0
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


class _Mp4Writer:
    def __init__(self, width: int, height: int, fps: Fraction, crf: int, preset: str) -> None:
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.options = {"crf": str(crf), "preset": preset}
        self.stream.codec_context.thread_count = 1
        self.fps, self.frames = fps, 0

    def add(self, frame: av.VideoFrame) -> None:
        image = frame.reformat(width=self.stream.width, height=self.stream.height, format="yuv420p")
        image.pts, image.time_base = self.frames, 1 / self.fps  # renumbered: each clip starts at 0
        self.container.mux(self.stream.encode(image))
        self.frames += 1

    def finish(self) -> Encoded:
        self.container.mux(self.stream.encode())
        self.container.close()
        return Encoded(self.buffer.getvalue(), self.frames, self.stream.width, self.stream.height, float(self.fps))


def cut_segments(
    data: bytes,
    segments: list[tuple[int, int]],
    max_size: int | None = None,
    crf: int = 18,
    preset: str = "veryfast",
) -> list[Encoded]:
    """Encode frames ``[start, end)`` of each segment as its own H.264 mp4 (yuv420p), decoding
    the source once.

    Args:
        data: the source video's bytes (any container and codec PyAV decodes).
        segments: ``(start, end)`` frame ranges in display order, sorted, not overlapping.
        max_size: cap on the longer side in pixels (aspect kept, sizes even); ``None`` keeps
            the size (rounded down to even).
        crf: x264 constant rate factor (lower is better quality; 18 is visually lossless).
        preset: x264 preset.

    Returns:
        One :class:`Encoded` per segment, in order.

    Raises:
        ValueError: the segments are not sorted and disjoint, or the video ends before a
            segment does.
    """
    if any(s >= e for s, e in segments) or any(a[1] > b[0] for a, b in zip(segments, segments[1:])):
        raise ValueError(f"segments must be non-empty, sorted and disjoint, got {segments}")
    results: list[Encoded] = []
    with av.open(io.BytesIO(data)) as source:
        stream = source.streams.video[0]
        stream.codec_context.thread_count = 1
        fps = Fraction(stream.average_rate or stream.guessed_rate or 8).limit_denominator(1001)
        writer, todo = None, list(segments)
        for index, frame in enumerate(source.decode(stream)):
            if not todo:
                break
            start, end = todo[0]
            if index < start:
                continue
            if writer is None:
                writer = _Mp4Writer(*fit_size(frame.width, frame.height, max_size), fps, crf, preset)
            writer.add(frame)
            if index == end - 1:
                results.append(writer.finish())
                writer, todo = None, todo[1:]
    if todo:
        raise ValueError(f"the video ends before frame {todo[0][1] - 1} (segment {todo[0]})")
    return results


def transcode_mp4(data: bytes, max_size: int | None = None, crf: int = 18, preset: str = "veryfast") -> Encoded:
    """Every frame of a video re-encoded as H.264 mp4 (arguments as in :func:`cut_segments`).

    Raises:
        ValueError: no frame decodes.
    """
    with av.open(io.BytesIO(data)) as source:
        stream = source.streams.video[0]
        stream.codec_context.thread_count = 1
        fps = Fraction(stream.average_rate or stream.guessed_rate or 8).limit_denominator(1001)
        writer = None
        for frame in source.decode(stream):
            if writer is None:
                writer = _Mp4Writer(*fit_size(frame.width, frame.height, max_size), fps, crf, preset)
            writer.add(frame)
    if writer is None:
        raise ValueError("no frame decodes")
    return writer.finish()
