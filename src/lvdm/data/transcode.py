"""Re-encode a stretch of a video as H.264 mp4, one frame in memory at a time.

Used by ``lvdm data ingest --reencode`` (whole videos, size capped) and ``lvdm data split``
(one clip per scene). Frames stream from the decoder to the encoder, so memory does not grow
with the video's length, and decoding stops after ``end``.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av

__all__ = ["fit_size", "transcode_mp4"]


def fit_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """``(width, height)`` scaled down (never up) so the longer side is at most ``max_size``,
    each rounded down to even (H.264 4:2:0 needs even sizes), at least 2."""
    scale = min(1.0, max_size / max(width, height)) if max_size else 1.0
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def transcode_mp4(
    data: bytes,
    start: int = 0,
    end: int | None = None,
    max_size: int | None = None,
    crf: int = 18,
    preset: str = "veryfast",
) -> tuple[bytes, int, tuple[int, int], float]:
    """Decode frames ``start .. end - 1`` of a video and encode them as H.264 mp4 (yuv420p).

    Args:
        data: the source video's bytes (any container and codec PyAV decodes).
        start: first frame (decode order = display order for the frames PyAV returns).
        end: one past the last frame; ``None`` for the end of the video.
        max_size: cap on the longer side in pixels (aspect kept, sizes even); ``None`` keeps
            the size (rounded down to even).
        crf: x264 constant rate factor (lower is better quality; 18 is visually lossless).
        preset: x264 preset.

    Returns:
        ``(mp4 bytes, frames written, (width, height), fps)``.

    Raises:
        ValueError: no frame in ``[start, end)``.
    """
    out = io.BytesIO()
    written = 0
    with av.open(io.BytesIO(data)) as source, av.open(out, mode="w", format="mp4") as sink:
        stream = source.streams.video[0]
        stream.codec_context.thread_count = 1
        rate = stream.average_rate or stream.guessed_rate or Fraction(8)
        fps = Fraction(rate).limit_denominator(1001)
        encoder = None
        for index, frame in enumerate(source.decode(stream)):
            if index < start:
                continue
            if end is not None and index >= end:
                break
            if encoder is None:
                width, height = fit_size(frame.width, frame.height, max_size)
                encoder = sink.add_stream("libx264", rate=fps)
                encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
                encoder.options = {"crf": str(crf), "preset": preset}
                encoder.codec_context.thread_count = 1
            image = frame.reformat(width=width, height=height, format="yuv420p")
            image.pts, image.time_base = written, 1 / fps  # renumbered: the clip starts at 0
            sink.mux(encoder.encode(image))
            written += 1
        if encoder is None:
            raise ValueError(f"no frames in [{start}, {end}) to encode")
        sink.mux(encoder.encode())
    return out.getvalue(), written, (width, height), float(fps)
