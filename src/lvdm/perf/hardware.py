"""Peak dense tensor-core FLOP/s and memory of the accelerators lvdm users train on — one table.

Numbers are the vendors' datasheet figures **without sparsity** (NVIDIA's headline numbers
for H100/H200 bf16 assume 2:4 sparsity and are twice these). MFU divides achieved model
FLOP/s by these peaks. Lightning's ``lightning.fabric.utilities.throughput`` has a similar
table, but it lists H200 at its sparse figure, has no H800 or L40S, and its monitor
synchronises the GPU every step; lvdm keeps its own small table for those reasons.
"""

from __future__ import annotations

from typing import Optional

import torch

#: name → (bf16, fp16, tf32, fp32) peak FLOP/s, dense; memory in GiB-ish (datasheet GB).
PEAKS: dict[str, dict[str, float]] = {
    # Hopper (H800 = H100 SXM with reduced NVLink; same tensor throughput)
    "h100-sxm": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12, "memory_gb": 80},
    "h100-pcie": {"bf16": 756.0e12, "fp16": 756.0e12, "tf32": 378.0e12, "fp32": 51.2e12, "memory_gb": 80},
    "h100-nvl": {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60.0e12, "memory_gb": 94},
    "h200": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12, "memory_gb": 141},
    "h200-nvl": {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60.0e12, "memory_gb": 141},
    "h800": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12, "memory_gb": 80},
    # Ampere (A800 = A100 with reduced NVLink)
    "a100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12, "memory_gb": 80},
    "a800": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12, "memory_gb": 80},
    # Ada (fp16/bf16 with fp32 accumulation, as PyTorch runs them)
    "l40s": {"bf16": 362.05e12, "fp16": 362.05e12, "tf32": 183.0e12, "fp32": 91.6e12, "memory_gb": 48},
    "l40": {"bf16": 181.0e12, "fp16": 181.0e12, "tf32": 90.5e12, "fp32": 90.5e12, "memory_gb": 48},
    "rtx4090": {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12, "memory_gb": 24},
    # Volta (no bf16)
    "v100": {"fp16": 125e12, "tf32": 15.7e12, "fp32": 15.7e12, "memory_gb": 32},
}

DTYPES = ("bf16", "fp16", "tf32", "fp32")


def device_kind(device_name: str) -> Optional[str]:
    """Map a ``torch.cuda.get_device_name()`` string (``"NVIDIA H100 80GB HBM3"``) to a key of
    :data:`PEAKS`, or None when the device is not in the table."""
    name = device_name.lower().replace("-", " ")
    if "h200" in name:
        return "h200-nvl" if "nvl" in name else "h200"
    if "h100" in name:
        if "nvl" in name:
            return "h100-nvl"
        return "h100-pcie" if "pcie" in name else "h100-sxm"
    for key, needle in (("h800", "h800"), ("a800", "a800"), ("a100", "a100"), ("l40s", "l40s"), ("v100", "v100")):
        if needle in name:
            return key
    if "l40" in name:
        return "l40"
    if "4090" in name:
        return "rtx4090"
    return None


def dtype_key(dtype: torch.dtype | str) -> str:
    """``torch.bfloat16`` / ``"bf16-mixed"`` / ``"bf16"`` → ``"bf16"``; float32 is ``tf32`` when
    PyTorch's float32 matmul precision allows TF32."""
    if isinstance(dtype, str):
        text = dtype.lower()
        for key in ("bf16", "fp16", "tf32", "fp32"):
            if text.startswith(key):
                return key
        if text.startswith(("16", "half", "float16")):
            return "fp16"
        if text.startswith(("32", "float32", "64", "float64")):
            dtype = torch.float32
        else:
            raise ValueError(f"unknown precision {dtype!r}; use one of {DTYPES}")
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    return "tf32" if torch.get_float32_matmul_precision() != "highest" else "fp32"


def peak_flops(kind: str, dtype: torch.dtype | str = "bf16") -> Optional[float]:
    """Peak dense FLOP/s of a device ``kind`` (a :data:`PEAKS` key) at ``dtype``; None if unknown."""
    if kind not in PEAKS:
        raise ValueError(f"unknown device kind {kind!r}; choose from {sorted(PEAKS)}")
    return PEAKS[kind].get(dtype_key(dtype))


def device_peak_flops(device: torch.device, dtype: torch.dtype | str) -> Optional[float]:
    """Peak FLOP/s of a live ``device`` (None on CPU and on GPUs missing from the table)."""
    if device.type != "cuda":
        return None
    kind = device_kind(torch.cuda.get_device_name(device))
    return None if kind is None else PEAKS[kind].get(dtype_key(dtype))
