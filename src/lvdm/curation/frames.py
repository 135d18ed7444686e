"""Bounded frame sampling for scorers and captioners: a few chosen frames of a clip, never all.

A 50 KB file that claims (or hides) a 100 000-frame, 16 K video must not grow into gigabytes:
the frame count is read from the container (or counted from packets, which costs no
decoding), the frame size is checked before the first frame is decoded, decoding stops after
the last frame asked for, and each kept frame is downscaled at once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from lvdm.data.media_probe import ProbeError, check_image_header
from lvdm.data.schema import IMAGE_EXTENSIONS
from lvdm.data.video import VideoDecodeError, count_video_frames

__all__ = ["Clip", "count_frames", "evenly_spaced", "load_clip_frames", "resize_short_side"]


@dataclass
class Clip:
    """What a scorer sees of one sample.

    Attributes:
        key: the sample key.
        kind: ``video`` or ``image``.
        total: frames in the clip (1 for an image).
        frames: decoded RGB ``uint8 [H, W, 3]`` frames by frame index (the union of what the
            stage's scorers asked for), downscaled to the stage's ``max_short_side``.
        meta: the sample's json.
        caption: the sample's ``txt``.
        width, height: the clip's native frame size.
    """

    key: str
    kind: str
    total: int
    frames: dict[int, np.ndarray]
    meta: dict = field(default_factory=dict)
    caption: str = ""
    width: int = 0
    height: int = 0


def evenly_spaced(total: int, count: int) -> list[int]:
    """``count`` frame indices spread over ``total`` frames (centres of equal segments)."""
    if total <= 0 or count <= 0:
        return []
    count = min(count, total)
    return sorted({int((i + 0.5) * total / count) for i in range(count)})


def resize_short_side(frame: np.ndarray, short_side: int, upscale: bool = False) -> np.ndarray:
    """Resize so the shorter side is ``short_side`` (area filter down, linear up); never upscales
    unless ``upscale``."""
    import cv2

    h, w = frame.shape[:2]
    scale = short_side / min(h, w)
    if scale == 1 or (scale > 1 and not upscale):
        return frame
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def count_frames(container, stream, max_frames: int) -> int:
    """The video stream's frame count: the container's, or its packets counted (no decoding)
    when the container does not say; at most ``max_frames``."""
    if stream.frames and stream.frames > 0:
        return min(int(stream.frames), max_frames)
    return count_video_frames(container, stream, max_frames)


def _check_header(data: bytes, ext: str, key: str, max_pixels: int) -> None:
    """Refuse an image or GIF whose header states too many pixels, before anything decodes it
    (FFmpeg decodes a GIF's first frame to open it)."""
    if ext in IMAGE_EXTENSIONS or ext == "gif":
        try:
            check_image_header(data, max_pixels)
        except ProbeError as exc:
            raise VideoDecodeError(f"{key!r}: {exc}") from None


def _image(data: bytes, key: str, indices_for, max_short_side: int, meta, caption) -> Clip:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:  # its header's size was checked before
            width, height = image.size
            frame = np.asarray(image.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as exc:
        raise VideoDecodeError(f"cannot decode image {key!r}: {exc}") from exc
    frames = {0: resize_short_side(frame, max_short_side)} if indices_for(1) else {}
    return Clip(key, "image", 1, frames, meta, caption, width, height)


def _decode_wanted(data, key, indices_for, max_frames, max_pixels, max_short_side, total):
    """One bounded pass: ``(total, frames, decoded, width, height)``. ``decoded`` counts the
    frames decoded when the pass ran to the end of the stream, else equals ``total``."""
    import av
    from av.video.reformatter import VideoReformatter

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"cannot open video {key!r}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"no video stream in {key!r}")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise VideoDecodeError(f"video {key!r} is {width}x{height}, over the {max_pixels}-pixel limit")
        if total is None:
            try:
                total = count_frames(container, stream, max_frames)
            except av.error.FFmpegError as exc:
                raise VideoDecodeError(f"cannot read video {key!r}: {exc}") from exc
        wanted = set(indices_for(total)) if total else set()
        last = max(wanted) if wanted else -1
        frames: dict[int, np.ndarray] = {}
        stream.codec_context.thread_count = 1
        reformatter = VideoReformatter()
        decoded, ended = 0, True
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                if index in wanted:
                    rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
                    frames[index] = resize_short_side(rgb, max_short_side)
                if index >= last or decoded >= max_frames:
                    ended = False
                    break
        except av.error.FFmpegError as exc:
            if not frames and not decoded:
                raise VideoDecodeError(f"cannot decode video {key!r}: {exc}") from exc
    return total, frames, (decoded if ended else total), width, height


def load_clip_frames(
    data: bytes,
    ext: str,
    key: str,
    indices_for,
    meta: dict | None = None,
    caption: str = "",
    max_frames: int = 10_000,
    max_pixels: int = 4096 * 4096,
    max_short_side: int = 512,
) -> Clip:
    """Decode only the frames ``indices_for(total)`` asks for.

    Args:
        data: the media bytes (any container PyAV opens, or an image Pillow opens).
        ext: the media extension (``mp4``, ``webm``, ``jpg``...): images are one frame.
        key: the sample key, for error messages.
        indices_for: ``total frames -> frame indices`` to keep.
        meta: the sample's json (kept on the :class:`Clip`).
        caption: the sample's caption.
        max_frames: frames counted or decoded at most (a container that lies stops here).
        max_pixels: larger frames are refused before decoding.
        max_short_side: kept frames are downscaled to this shorter side.

    Raises:
        VideoDecodeError: not decodable, no video stream, too large, or no frame decoded.
    """
    meta = dict(meta or {})
    _check_header(data, ext, key, max_pixels)
    if ext in IMAGE_EXTENSIONS:
        return _image(data, key, indices_for, max_short_side, meta, caption)
    total, frames, decoded, width, height = _decode_wanted(data, key, indices_for, max_frames, max_pixels,
                                                          max_short_side, None)
    if decoded < total:
        # the container overstated its length and the frames asked for were chosen from a count
        # that does not exist: choose again from the frames that decoded (a second bounded pass)
        total, frames, decoded, width, height = _decode_wanted(data, key, indices_for, max_frames, max_pixels,
                                                              max_short_side, decoded)
    if not frames and indices_for(total):
        raise VideoDecodeError(f"no frames decoded from video {key!r}")
    return Clip(key, "video", total, frames, meta, caption, width, height)
