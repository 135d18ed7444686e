"""Model-free dense optical flow: pyramidal Lucas–Kanade in plain torch.

The flow behind ``dynamic_degree`` when no RAFT weights (or no torchvision) are at hand
(``lvdm eval vbench --flow lucas_kanade``). Lucas & Kanade (1981), coarse to fine as in
Bouguet's pyramidal form: at each level of an image pyramid (coarsest first), the second frame
is warped by the current flow and the flow is refined by solving, for every pixel, the 2x2
least-squares system of the brightness-constancy equation over a square window
``[Σgx² Σgxgy; Σgxgy Σgy²] d = -[Σgx·gt; Σgy·gt]``. Where the window holds too little texture
to fix both components (its structure tensor's smaller eigenvalue under ``min_eigenvalue``:
flat areas, the aperture problem along straight edges), the pixel keeps the flow it had from
the coarser level; on a still pair every temporal difference is 0, so the flow is exactly 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LucasKanadeFlow"]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as OpenCV's RGB2GRAY


def _gray(image: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` → ``[N, 1, H, W]`` luma, float64."""
    return (image.double() * image.new_tensor(_LUMA, dtype=torch.float64).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _pyramid(image: torch.Tensor, levels: int, smallest: int) -> list[torch.Tensor]:
    """Finest first: each level halves the previous one (area averaging) while its shorter
    side stays at least ``smallest`` pixels, ``levels`` levels at most."""
    out = [image]
    while len(out) < levels and min(out[-1].shape[-2:]) // 2 >= smallest:
        height, width = out[-1].shape[-2:]
        out.append(F.interpolate(out[-1], size=(height // 2, width // 2), mode="area"))
    return out


def _warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` sampled at ``(x + flow_x, y + flow_y)`` (bilinear, edge values outside)."""
    height, width = image.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=flow.dtype, device=flow.device),
                            torch.arange(width, dtype=flow.dtype, device=flow.device), indexing="ij")
    x = (xs + flow[:, 0]) * (2.0 / max(width - 1, 1)) - 1.0
    y = (ys + flow[:, 1]) * (2.0 / max(height - 1, 1)) - 1.0
    return F.grid_sample(image, torch.stack([x, y], -1), mode="bilinear", padding_mode="border", align_corners=True)


def _gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences (one-sided at the borders), in intensity per pixel."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2.0
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2.0
    return gx, gy


def _median(flow: torch.Tensor, size: int) -> torch.Tensor:
    """Each flow component's median over a ``size`` x ``size`` neighbourhood (edge values
    outside): removes isolated outliers, keeps motion boundaries (Sun et al., CVPR 2010)."""
    if size <= 1:
        return flow
    height, width = flow.shape[-2:]
    padded = F.pad(flow, (size // 2,) * 4, mode="replicate")
    patches = F.unfold(padded, size).view(len(flow), 2, size * size, height, width)
    return patches.median(dim=2).values


class LucasKanadeFlow:
    """Pyramidal Lucas–Kanade optical flow as a ``vbench`` flow: ``(image1, image2)``, each
    ``float [N, 3, H, W]`` in [0, 255], → flow ``[N, 2, H, W]`` in pixels (x, y), no model.

    Args:
        window: side of the square window the least-squares system sums over (odd).
        levels: pyramid levels at most (each halves the frame; the coarsest keeps a shorter side
            of at least ``window`` pixels). Displacements up to about ``window / 2 · 2^(levels-1)``
            pixels are recovered.
        iters: warp-and-solve refinements per level.
        min_eigenvalue: the smallest structure-tensor eigenvalue (window mean of squared
            gradients, intensity² per pixel²) for a pixel to be updated at a level.
        device: where the flow is computed.
    """

    def __init__(self, window: int = 9, levels: int = 5, iters: int = 5, min_eigenvalue: float = 1.0,
                 median: int = 5, device: str = "cpu") -> None:
        if window < 3 or window % 2 == 0:
            raise ValueError(f"window must be an odd number >= 3; got {window}")
        if levels < 1 or iters < 1:
            raise ValueError(f"levels and iters must be >= 1; got levels={levels}, iters={iters}")
        self.window, self.levels, self.iters = window, levels, iters
        self.min_eigenvalue, self.median, self.device = min_eigenvalue, median, torch.device(device)

    def _window_mean(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.window, stride=1, padding=self.window // 2, count_include_pad=False)

    def _refine(self, first: torch.Tensor, second: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """One Lucas–Kanade step: the flow plus each pixel's least-squares update."""
        warped = _warp(second, flow) if flow.any() else second  # no resampling rounding at zero flow
        gx, gy = _gradients((first + warped) / 2.0)
        gt = warped - first
        sxx, syy, sxy = self._window_mean(gx * gx), self._window_mean(gy * gy), self._window_mean(gx * gy)
        sxt, syt = self._window_mean(gx * gt), self._window_mean(gy * gt)
        det = sxx * syy - sxy * sxy
        smaller = (sxx + syy - torch.sqrt((sxx - syy) ** 2 + 4.0 * sxy * sxy)) / 2.0
        solvable = smaller >= self.min_eigenvalue
        safe = torch.where(solvable, det, torch.ones_like(det))
        du = torch.where(solvable, (sxy * syt - syy * sxt) / safe, torch.zeros_like(det))
        dv = torch.where(solvable, (sxy * sxt - sxx * syt) / safe, torch.zeros_like(det))
        return flow + torch.cat([du, dv], dim=1)

    @torch.inference_mode()
    def __call__(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        firsts = _pyramid(_gray(image1.to(self.device)), self.levels, self.window)
        seconds = _pyramid(_gray(image2.to(self.device)), self.levels, self.window)
        flow = torch.zeros(len(image1), 2, *firsts[-1].shape[-2:], dtype=torch.float64, device=self.device)
        for first, second in zip(reversed(firsts), reversed(seconds)):
            height, width = first.shape[-2:]
            if flow.shape[-2:] != (height, width):  # up one level: the flow's size and its pixels
                scale = flow.new_tensor([width / flow.shape[-1], height / flow.shape[-2]]).view(1, 2, 1, 1)
                flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False) * scale
            for _ in range(self.iters):
                flow = _median(self._refine(first, second, flow), self.median)
        return flow.float().cpu()
