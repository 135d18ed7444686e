"""``lvdm data stats``: what a dataset folder holds — counts, distributions, histograms.

Reads only ``manifest.parquet`` (one row per sample, the json's scalar fields), so it costs
no media decoding. Plots need matplotlib (``pip install 'lvdm[plots]'``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from lvdm.data.schema import read_manifest

__all__ = ["dataset_stats"]

# Columns that are numbers but not measurements worth a histogram.
_SKIP = {"start_frame", "end_frame", "scene_index", "frames_listed"}
_LEAD = ("duration", "frames", "fps", "width", "height", "aspect")
_CATEGORIES = ("kind", "codec", "caption_source")


def _numeric_columns(frame) -> list[str]:
    import pandas as pd

    numeric = [c for c in frame.columns if c not in _SKIP and pd.api.types.is_numeric_dtype(frame[c])
               and not pd.api.types.is_bool_dtype(frame[c]) and frame[c].notna().any()]
    return [c for c in _LEAD if c in numeric] + sorted(c for c in numeric if c not in _LEAD)


def _describe(values: np.ndarray) -> dict:
    q = np.percentile(values, [5, 50, 95])
    return {"count": int(values.size), "mean": float(values.mean()), "min": float(values.min()),
            "p5": float(q[0]), "p50": float(q[1]), "p95": float(q[2]), "max": float(values.max())}


def _plot(frame, numeric: list[str], out: Path, bins: int) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("lvdm data stats draws its plots with matplotlib: pip install 'lvdm[plots]' "
                          "(or pass --plots false)") from exc
    written = []
    for column in numeric:
        values = frame[column].dropna().to_numpy(dtype=float)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(values, bins=min(bins, max(1, len(np.unique(values)))), color="#4472c4")
        ax.set(xlabel=column, ylabel="samples", title=f"{column} (n={values.size})")
        fig.tight_layout()
        path = out / f"hist_{column}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(str(path))
    if {"width", "height"} <= set(frame.columns):
        sizes = frame[["width", "height"]].dropna()
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.scatter(sizes["width"], sizes["height"], s=8, alpha=0.5, color="#4472c4")
        ax.set(xlabel="width", ylabel="height", title=f"resolution (n={len(sizes)})")
        fig.tight_layout()
        path = out / "resolution.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(str(path))
    return written


def dataset_stats(source: str, out: Optional[str] = None, plots: bool = True, bins: int = 30) -> dict:
    """Counts and distributions of a dataset folder, as a printed table, ``stats.json`` and PNGs.

    For every numeric manifest column (duration, frames, fps, width, height, aspect, and every
    score a later stage wrote) it reports count, mean, min, 5th/50th/95th percentile and max
    (samples without the field are left out of its row), counts by kind, codec, caption
    source and resolution, and draws one histogram per column plus a width × height scatter.

    Args:
        source: a dataset folder (with ``manifest.parquet``).
        out: where ``stats.json`` and the PNGs go (default: ``<source>/stats``).
        plots: draw the PNGs (needs matplotlib).
        bins: histogram bins.

    Returns:
        The statistics (what ``stats.json`` holds) with ``plots``: the PNG paths.
    """
    frame = read_manifest(source)
    target = Path(out) if out else Path(source) / "stats"
    target.mkdir(parents=True, exist_ok=True)
    numeric = _numeric_columns(frame)
    stats = {"samples": len(frame), "shards": int(frame["shard"].nunique()) if len(frame) else 0, "fields": {},
             "counts": {}}
    for column in numeric:
        values = frame[column].dropna().to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            stats["fields"][column] = _describe(values)
    for column in _CATEGORIES:
        if column in frame.columns:
            stats["counts"][column] = {str(k): int(v) for k, v in frame[column].value_counts(dropna=False).items()}
    if {"width", "height"} <= set(frame.columns):
        sizes = frame["width"].astype("Int64").astype(str) + "x" + frame["height"].astype("Int64").astype(str)
        stats["counts"]["resolution"] = {k: int(v) for k, v in sizes.value_counts().head(20).items()}
    if "duration" in frame.columns:
        stats["total_hours"] = float(frame["duration"].fillna(0).sum() / 3600)
    stats["plots"] = _plot(frame, numeric, target, bins) if plots and len(frame) else []
    (target / "stats.json").write_text(json.dumps(stats, indent=2))
    _print(stats, source)
    return stats


def _print(stats: dict, source: str) -> None:
    hours = f", {stats['total_hours']:.3f} h of video" if "total_hours" in stats else ""
    print(f"{source}: {stats['samples']} samples in {stats['shards']} shards{hours}")
    if stats["fields"]:
        width = max(len(name) for name in stats["fields"])
        columns = ("count", "mean", "min", "p5", "p50", "p95", "max")
        print(f"  {'field':<{width}}  " + "  ".join(f"{c:>9}" for c in columns))
        for name, row in stats["fields"].items():
            cells = [f"{row['count']:>9}"] + [f"{_short(row[c]):>9}" for c in columns[1:]]
            print(f"  {name:<{width}}  " + "  ".join(cells))
    for name, counts in stats["counts"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if stats["plots"]:
        print(f"  plots: {Path(stats['plots'][0]).parent}/ ({len(stats['plots'])} PNG files)")


def _short(value: float) -> str:
    if value == 0 or (1e-3 <= abs(value) < 1e6):
        return f"{value:.4g}"
    return f"{value:.3e}" if math.isfinite(value) else str(value)
