"""Video I/O with PyAV: in-memory H.264 mp4 encoding, decoding, and clip sampling.

torchvision no longer decodes video, so everything here goes through PyAV (``av``), which
ships its own FFmpeg with libx264.
"""

from __future__ import annotations

import io
import itertools
from fractions import Fraction
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["VideoDecodeError", "VideoTooLargeError", "VideoTooShortError", "encode_mp4", "write_mp4", "read_frames", "decode_clip"]

VideoSource = bytes | str | Path


class VideoDecodeError(ValueError):
    """A video could not be decoded (corrupt, truncated or not a video); names the source."""


class VideoTooLargeError(VideoDecodeError):
    """A video's frames are larger than the decoder's pixel limit; names the source."""


class VideoTooShortError(ValueError):
    """A video has fewer frames than a clip needs; names the source."""


# A few KB of container can claim a huge frame size: frames above this are refused.
MAX_PIXELS = 4096 * 4096  # per frame
MAX_SCANNED_FRAMES = 10_000  # frames counted to choose a random window in a clip of unknown length
# ... or a huge frame count: a 46 KB GIF of 2000 frames of 4000x4000 decodes to 96 GB. This bounds
# the bytes decoded for one clip, frames x height x width x 3, every frame decoded counted (those
# passed over to reach a random start too): 2 GiB is 345 frames of 1080p, 777 of 720p.
MAX_DECODED_BYTES = 2 * 1024**3


def _source_name(source: VideoSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of video in memory>"
    return str(source)


def _open(source: VideoSource, label: str) -> av.container.InputContainer:
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise FileNotFoundError(f"video file not found: {source}")
        target = str(source)
    else:
        target = io.BytesIO(bytes(source))
    try:
        return av.open(target, mode="r")
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"cannot open video {label}: {exc}") from exc


def encode_mp4(frames: np.ndarray, fps: float = 8, crf: int = 12) -> bytes:
    """Encode RGB frames as an in-memory H.264 (libx264) mp4.

    The pixel format is ``yuv420p`` (plays everywhere) when height and width are both even;
    H.264 4:2:0 cannot represent odd sizes, so odd-sized frames are encoded as ``yuv444p``
    instead of being padded or cropped, which keeps the exact frame size on decode.

    Args:
        frames: ``[T, H, W, 3]`` uint8 RGB frames.
        fps: Frame rate stored in the container.
        crf: x264 constant rate factor; low values (10-15) keep colours nearly exact.

    Returns:
        The mp4 file as bytes.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a [T, H, W, 3] uint8 array, got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("cannot encode a video with zero frames")
    _, height, width, _ = frames.shape
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
        # Short clips are dominated by encoder set-up: one thread and "veryfast" measured
        # fastest on 8x32x32 clips (faster than "ultrafast"); the low CRF keeps the quality.
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def write_mp4(path: str | Path, frames: np.ndarray, fps: float = 8, crf: int = 12) -> Path:
    """Encode ``frames`` with :func:`encode_mp4` and write them to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(frames, fps=fps, crf=crf))
    return path


def _iter_rgb(container: av.container.InputContainer, label: str, skip: int = 0,
              max_decoded_bytes: int = MAX_DECODED_BYTES):
    """RGB frames in order; the first ``skip`` are decoded but yielded as ``None`` (not
    converted: a random window late in a clip then costs decoding only, not RGB conversion).
    Stops with :class:`VideoTooLargeError` once the frames decoded pass ``max_decoded_bytes``
    (counted from the decoded frames' own sizes: the header may understate them)."""
    max_pixels, decoded = MAX_PIXELS, 0
    stream = container.streams.video[0]
    if stream.codec_context is None:  # found by fuzzing: a video stream FFmpeg has no decoder for
        raise VideoDecodeError(f"no decoder for the video stream of {label}")
    height, width = stream.codec_context.height, stream.codec_context.width
    if height * width > max_pixels:
        raise VideoTooLargeError(f"video {label} has {width}x{height} frames, more than the {max_pixels} pixels allowed")
    # One decoder thread: parallelism comes from DataLoader workers, and on short clips
    # FFmpeg's frame threads cost more to start than they save (2x slower on 32x32 clips).
    stream.codec_context.thread_count = 1
    # One reformatter per video: `frame.to_ndarray(format="rgb24")` builds a new swscale
    # context for every frame, which made RGB conversion 5x the cost of decoding itself.
    reformatter = VideoReformatter()
    try:
        for index, frame in enumerate(container.decode(stream)):
            if frame.height * frame.width > max_pixels:  # the header may understate the size
                raise VideoTooLargeError(f"video {label} has a {frame.width}x{frame.height} frame, "
                                         f"more than the {max_pixels} pixels allowed")
            decoded += 3 * frame.height * frame.width
            if decoded > max_decoded_bytes:
                raise VideoTooLargeError(f"video {label}: its first {index + 1} frames ({frame.width}x{frame.height}) "
                                         f"decode to {decoded} bytes, more than max_decoded_bytes={max_decoded_bytes}")
            yield None if index < skip else reformatter.reformat(frame, format="rgb24").to_ndarray()
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"cannot decode video {label}: {exc}") from exc


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def read_frames(source: VideoSource, name: str | None = None,
                max_decoded_bytes: int = MAX_DECODED_BYTES) -> tuple[np.ndarray, float]:
    """Decode every frame of a video.

    Args:
        source: mp4 bytes or a file path.
        name: Label used in error messages (defaults to the path, or a byte count).
        max_decoded_bytes: refuse (:class:`VideoTooLargeError`) a video whose frames decode to
            more bytes (frames x height x width x 3) than this.

    Returns:
        ``([T, H, W, 3] uint8 RGB frames, fps)``.
    """
    label = _source_name(source, name)
    with _open(source, label) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"no video stream in {label}")
        fps = _fps(container.streams.video[0])
        frames = list(_iter_rgb(container, label, max_decoded_bytes=max_decoded_bytes))
    if not frames:
        raise VideoDecodeError(f"no frames decoded from {label}")
    return np.stack(frames), fps


def _resize_crop(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``[T, C, h, w]`` so the shorter side covers ``size``, then centre-crop."""
    height, width = size
    h, w = video.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return video[..., top : top + height, left : left + width]


def decode_clip(
    source: VideoSource,
    num_frames: int,
    frame_interval: int = 1,
    resolution: int | tuple[int, int] | None = None,
    random_start: bool = False,
    rng: np.random.Generator | None = None,
    name: str | None = None,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
) -> torch.Tensor:
    """Decode ``num_frames`` frames spaced ``frame_interval`` apart as a model-ready tensor.

    Decoding stops after the last frame needed.

    Args:
        source: mp4 bytes or a file path.
        num_frames: Number of frames in the clip.
        frame_interval: Step between taken frames (1 = consecutive frames).
        resolution: Output ``(height, width)``, or one int for a square; the video is resized
            so its shorter side covers it (bilinear, antialiased) and centre-cropped.
            ``None`` keeps the native size.
        random_start: Start at a uniformly random valid frame instead of frame 0: among the
            starts whose decoding stays within ``max_decoded_bytes``.
        rng: Generator for the random start (a fresh unseeded one if ``None``).
        name: Label used in error messages (defaults to the path, or a byte count).
        max_decoded_bytes: Most bytes (frames x height x width x 3) decoded for the clip, every
            frame up to its last counted; a clip that needs more is refused from the header's
            frame size before anything is decoded, and decoding stops as soon as the frames'
            real sizes pass it (default :data:`MAX_DECODED_BYTES`, 2 GiB).

    Returns:
        ``[3, num_frames, H, W]`` float32 in ``[-1, 1]``.

    Raises:
        VideoTooShortError: the video has fewer than ``(num_frames - 1) * frame_interval + 1``
            frames (a ``ValueError`` subclass).
        VideoTooLargeError: its frames have more than ``MAX_PIXELS`` pixels, or the clip more
            than ``max_decoded_bytes`` decoded bytes.
        VideoDecodeError: the data is corrupt or not a video (a ``ValueError`` subclass).
        FileNotFoundError: ``source`` is a path that does not exist.
    """
    if num_frames < 1 or frame_interval < 1:
        raise ValueError(f"num_frames and frame_interval must be >= 1, got {num_frames}, {frame_interval}")
    label = _source_name(source, name)
    span = (num_frames - 1) * frame_interval + 1
    with _open(source, label) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"no video stream in {label}")
        total, affordable = _frames_and_budget(container, label, span, random_start, max_decoded_bytes)
        if total and total < span:
            raise VideoTooShortError(f"video {label} has {total} frames, fewer than the {span} needed for "
                                     f"num_frames={num_frames}, frame_interval={frame_interval}")
        start = _start(total, affordable, span, rng) if random_start else 0
        size = None if resolution is None else (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        decoded = _iter_rgb(container, label, skip=start, max_decoded_bytes=max_decoded_bytes)
        frames, reached = _take(decoded, start, span, frame_interval, lambda frame: _model_frame(frame, size))
    if reached < span:
        raise VideoTooShortError(f"video {label} decoded {start + reached} frames, fewer than the "
                         f"{start + span} needed for num_frames={num_frames}, frame_interval={frame_interval}")
    return torch.stack(frames, dim=1)


def _start(total: int, affordable: int, span: int, rng: np.random.Generator | None) -> int:
    """A uniformly random first frame among those whose window of ``span`` frames fits the
    video and the byte budget (0 when the frame count is unknown)."""
    if not total:
        return 0
    return int((rng or np.random.default_rng()).integers(0, min(total, affordable) - span + 1))


def _frames_and_budget(container, label: str, span: int, random_start: bool, max_decoded_bytes: int) -> tuple[int, int]:
    """``(frames in the video or 0 if unknown, frames that max_decoded_bytes affords)``, by the
    header's frame size; a window of ``span`` frames that the budget cannot afford is refused."""
    stream = container.streams.video[0]
    context = stream.codec_context
    frame_bytes = 3 * context.height * context.width if context is not None else 0  # 0: the header does not say
    if frame_bytes and span * frame_bytes > max_decoded_bytes:
        raise VideoTooLargeError(f"video {label}: a window of {span} frames of {context.width}x{context.height} "
                                 f"decodes to {span * frame_bytes} bytes, more than max_decoded_bytes={max_decoded_bytes}")
    affordable = max_decoded_bytes // frame_bytes if frame_bytes else MAX_SCANNED_FRAMES
    total = stream.frames  # 0 when the container does not say (webm, mkv)
    if not total and random_start:
        # Count by demuxing (no decoding) rather than decoding the whole video to choose a
        # start; only the first frames that can be afforded are candidates, so a container that
        # hides a huge frame count cannot make one clip decode without bound.
        try:
            total = count_video_frames(container, stream, min(MAX_SCANNED_FRAMES, affordable))
        except av.error.FFmpegError as exc:  # found by fuzzing: a mutated mp4 that cannot seek back
            raise VideoDecodeError(f"cannot read video {label}: {exc}") from exc
    return total, affordable


def _model_frame(frame: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
    """One ``[H, W, 3]`` uint8 frame → ``[3, h, w]`` float32 in ``[-1, 1]``, resized and cropped."""
    video = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    if size is not None:
        video = _resize_crop(video, size)
    return (video[0] / 127.5 - 1.0).clamp_(-1.0, 1.0)


def count_video_frames(container: av.container.InputContainer, stream, limit: int) -> int:
    """Frames of ``stream`` counted by demuxing its packets (nothing is decoded), at most
    ``limit``; the container is rewound. Raises ``av.error.FFmpegError`` for damaged data."""
    packets = (p for p in container.demux(stream) if p.size)
    count = sum(1 for _ in itertools.islice(packets, limit))
    container.seek(0)
    return count


def _take(frames, start: int, count: int, interval: int, convert) -> tuple[list, int]:
    """``(convert(frame) for every interval-th of frames start .. start + count - 1, how many
    of those frames the iterator had)``, without decoding past them. Each kept frame is
    converted as it arrives: only the converted clip stays in memory, not its decoded frames."""
    out, reached = [], 0
    for index, frame in enumerate(frames):
        if index < start:
            continue
        if reached % interval == 0:
            out.append(convert(frame))
        reached += 1
        if reached == count:
            break
    return out, reached
