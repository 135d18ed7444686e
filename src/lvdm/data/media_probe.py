"""Probe media bytes from their container: what a sample's json says, without a full decode.

:func:`probe_media` reads the container header, counts the video packets (demuxing only —
no pixels are produced) and decodes the first frame to prove the codec works. Only when the
container contradicts itself (its header lists a frame count its packets do not match) are
the frames decoded, one at a time and never more than ``max_frames`` of them, each checked
against ``max_pixels`` — so a small file whose header promises millions of huge frames costs
a bounded amount of memory and time, and is rejected with the reason. FFmpeg decodes an image
(and a GIF's first frame) just to open it, so those are first checked against ``max_pixels``
from their header (Pillow reads it without decoding): a 30 KB PNG claiming 16000x16000 pixels
is refused before any pixel exists.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import av

from lvdm.data.schema import IMAGE_EXTENSIONS, canonical_extension, media_kind

__all__ = ["MediaInfo", "ProbeError", "check_image_header", "probe_media"]


class ProbeError(ValueError):
    """Media that cannot become a sample; the message is the reason written to rejects.csv."""


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe_media` found.

    Attributes:
        ext: the extension to store the bytes under (their real container).
        kind: ``video`` or ``image``.
        codec: the video codec (``h264``, ``vp9``, ``gif``, ``png``...).
        fps: frames per second (0 for images).
        frames: number of frames (1 for images).
        width, height: frame size in pixels.
        duration: seconds (``frames / fps``; 0 for images).
        aspect: ``width / height``.
        frames_listed: the frame count the container header states (0 when it states none).
    """

    ext: str
    kind: str
    codec: str
    fps: float
    frames: int
    width: int
    height: int
    duration: float
    aspect: float
    frames_listed: int = 0

    def metadata(self) -> dict:
        """The sample-json fields (``kind``, ``codec``, ``fps``, ``frames``, ``width``, ``height``,
        ``duration``, ``aspect``)."""
        fields = asdict(self)
        for name in ("ext", "frames_listed"):
            fields.pop(name)
        return fields


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ProbeError(f"{what} has no frame size ({width}x{height})")
    if width * height > max_pixels:
        raise ProbeError(f"{what} frames are {width}x{height} = {width * height} pixels, more than "
                         f"max_pixels={max_pixels}")


def check_image_header(data: bytes, max_pixels: int) -> None:
    """Refuse an image whose header states more than ``max_pixels`` pixels. Pillow parses the
    header on open and decodes nothing until asked; bytes it cannot read pass (FFmpeg judges them).

    Raises:
        ProbeError: too many pixels (the size named), or more than Pillow's own
            decompression-bomb limit.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise ProbeError(f"image frames are more than Pillow's decompression-bomb limit of "
                         f"{2 * Image.MAX_IMAGE_PIXELS} pixels (max_pixels={max_pixels}): refused before "
                         f"decoding") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return
    _check_size(width, height, max_pixels, "image")


def _first_frame(container, stream, max_pixels: int) -> tuple[int, int]:
    """Decode until the first frame appears (at most 64 packets); its ``(width, height)``."""
    if stream.codec_context is None:  # a damaged header can leave the stream without a codec
        raise ProbeError("its video stream names no codec FFmpeg can decode")
    stream.codec_context.thread_count = 1
    for index, packet in enumerate(container.demux(stream)):
        if index >= 64:
            break
        for frame in packet.decode():
            _check_size(frame.width, frame.height, max_pixels, "decoded")
            return frame.width, frame.height
    raise ProbeError("no frame decodes from the video stream")


def _count_packets(container, stream, max_frames: int) -> tuple[int, float]:
    """Video packets with data, and the seconds the packets of all streams span (an audio
    track may outlast the video: the container's duration covers both), by demuxing only."""
    count, first, last = 0, None, None
    for packet in container.demux():
        if not packet.size:
            continue
        if packet.stream.index == stream.index:
            count += 1
            if count > max_frames:
                raise ProbeError(f"more than max_frames={max_frames} frames")
        if packet.pts is not None and packet.time_base is not None:
            start = float(packet.pts * packet.time_base)
            end = start + float((packet.duration or 0) * packet.time_base)
            first = start if first is None else min(first, start)
            last = end if last is None else max(last, end)
    return count, (last - first) if first is not None else 0.0


def _decode_count(data: bytes, max_frames: int, max_pixels: int) -> int:
    """Frames that really decode: one frame alive at a time, at most ``max_frames``."""
    count = 0
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise ProbeError("its video stream names no codec FFmpeg can decode")
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            _check_size(frame.width, frame.height, max_pixels, "decoded")
            count += 1
            if count > max_frames:
                raise ProbeError(f"more than max_frames={max_frames} frames decode")
    return count


def probe_media(
    data: bytes,
    ext: str | None = None,
    max_frames: int = 100_000,
    max_pixels: int = 4096 * 4096,
) -> MediaInfo:
    """Probe media bytes and check that they can become a sample.

    Args:
        data: the file's bytes.
        ext: the input's own extension; kept when it names the bytes' container (``.mov``
            stays ``mov``), otherwise the container's usual extension is used (matroska bytes
            named ``.mp4`` become ``webm`` when the codec is VP8/VP9/AV1, else ``mkv``).
        max_frames: reject videos with more frames (bounds every decode here).
        max_pixels: reject frames larger than this many pixels (bounds every decode here).

    Returns:
        The :class:`MediaInfo`.

    Raises:
        ProbeError: with the reason: empty; not a media file; cannot be opened; no video
            stream; no decodable frame; truncated (fewer frames or seconds than the header
            lists); too many frames or pixels.
    """
    if not data:
        raise ProbeError("empty file (0 bytes)")
    real = canonical_extension(data, ext)
    if real is None:
        raise ProbeError(f"not a media file (starts with {bytes(data[:12])!r})")
    if real in IMAGE_EXTENSIONS or real == "gif":  # FFmpeg decodes an image to open it: check its header first
        check_image_header(data, max_pixels)
    scan = _scan(data, real, ext, max_frames, max_pixels)
    if isinstance(scan, MediaInfo):  # an image
        return scan
    frames = _check_complete(data, scan, max_frames, max_pixels)
    if scan.ext == "gif" and not bytes(data).rstrip(b"\x00").endswith(b";"):
        raise ProbeError("truncated: the GIF has no trailer")
    if frames == 0:
        raise ProbeError("no frames in the video stream")
    duration = frames / scan.fps if scan.fps else scan.declared
    return MediaInfo(scan.ext, media_kind(scan.ext), scan.codec, round(scan.fps, 6), frames, scan.width, scan.height,
                     round(duration, 6), round(scan.width / scan.height, 6), scan.listed)


@dataclass(frozen=True)
class _Scan:
    """What one pass over a video's header and packets found."""

    ext: str
    codec: str
    fps: float
    listed: int  #: frames the header lists (0: none)
    declared: float  #: seconds the header declares (0: none)
    width: int
    height: int
    frames: int  #: video packets
    span: float  #: seconds the packets cover


def _scan(data: bytes, real: str, ext: str | None, max_frames: int, max_pixels: int) -> MediaInfo | _Scan:
    """Open the container: an image's :class:`MediaInfo`, or a video's :class:`_Scan` (its first
    frame decoded, its packets counted)."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise ProbeError(f"no video stream (streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            if stream.codec_context is None:  # a damaged header can leave the stream without a codec
                raise ProbeError("the video stream names no codec FFmpeg can decode")
            codec = stream.codec_context.name
            if real == "mkv" and (ext or "").lower().lstrip(".") != "mkv" and codec in ("vp8", "vp9", "av1"):
                real = "webm"
            if real in IMAGE_EXTENSIONS:
                width, height = _first_frame(container, stream, max_pixels)
                return MediaInfo(real, "image", codec, 0.0, 1, width, height, 0.0, round(width / height, 6))
            fps, listed = _fps(stream), int(stream.frames or 0)
            declared = float(container.duration) / av.time_base if container.duration else 0.0
            _check_size(stream.width, stream.height, max_pixels, "video")
            width, height = _first_frame(container, stream, max_pixels)
            container.seek(0)
            frames, span = _count_packets(container, stream, max_frames)
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:  # damaged metadata strings give the latter
        raise ProbeError(f"cannot read container: {exc}") from exc
    return _Scan(real, codec, fps, listed, declared, width, height, frames, span)


def _check_complete(data: bytes, scan: _Scan, max_frames: int, max_pixels: int) -> int:
    """The video's real frame count, refusing a truncated or misstated one."""
    frames = scan.frames
    if scan.listed and frames != scan.listed:
        # The header contradicts the packets: only decoding tells how many frames are real.
        try:
            frames = _decode_count(data, max_frames, max_pixels)
        except av.error.FFmpegError as exc:
            raise ProbeError(f"corrupt: header lists {scan.listed} frames, {frames} packets, decoding fails: "
                             f"{exc}") from exc
        if frames < scan.listed:
            raise ProbeError(f"truncated or misstated: the header lists {scan.listed} frames, {frames} decode")
    elif scan.declared and scan.fps and scan.span + 1.5 / scan.fps < 0.9 * scan.declared:
        raise ProbeError(f"truncated: the header says {scan.declared:.2f} s, its packets cover {scan.span:.2f} s")
    return frames
