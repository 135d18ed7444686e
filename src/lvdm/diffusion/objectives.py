"""Diffusion objectives: what to noise, what to predict, how to sample back.

An objective owns the forward process (timestep sampling, noising, regression target) and
the matching samplers. The network is seen only through ``model_fn(x_t, t, **cond) ->
prediction``: the conditioning keywords (text tokens, ...) pass through untouched, so
classifier-free guidance (``lvdm.diffusion.guidance``) wraps the network without the
objective knowing. All samplers share one signature:
``sample(model_fn, noise, num_steps, progress, x_given=None, frame_mask=None, **cond)``.

Masked frames (``lvdm.diffusion.masking``): with a ``frame_mask`` ``[B, T]`` the given latent
frames stay clean (timestep 0) in training and at every sampling step, the network receives
per-frame timesteps ``[B, T]``, and the loss counts the generated frames only.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Literal, Optional, Sequence

import torch
from tqdm.auto import tqdm

from lvdm.diffusion.masking import check_frame_mask, frame_timesteps, keep_given, masked_mse

ModelFn = Callable[..., torch.Tensor]  # model_fn(x_t, t, **cond) -> prediction


class Objective(ABC):
    """Base class of the training objectives; also the sampler of its own process."""

    num_sampling_steps: int

    @abstractmethod
    def training_loss(self, model_fn: ModelFn, x0: torch.Tensor, noise: Optional[torch.Tensor] = None,
                      frame_mask: Optional[torch.Tensor] = None, **cond) -> torch.Tensor:
        """Mean-squared error of the network's prediction on a noised ``x0`` (scalar); with a
        ``frame_mask`` the given frames stay clean and only the generated ones count."""

    @abstractmethod
    def loss_at(self, model_fn: ModelFn, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                frame_mask: Optional[torch.Tensor] = None, **cond) -> torch.Tensor:
        """The training loss of each sample at given times ``t`` ``[B]`` (the objective's own
        time units) and noise: ``[B]`` mean-squared errors (over the generated frames when a
        ``frame_mask`` is given). ``training_loss`` is its mean at sampled times, so fixed
        ``noise`` and ``t`` give a validation loss without sampling noise (Open-Sora 1.2's
        evaluation loss)."""

    @abstractmethod
    def fixed_timesteps(self, num: int) -> torch.Tensor:
        """``num`` evenly spaced interior times of the process (no endpoints), in the units
        ``loss_at`` takes: the grid of a fixed-timestep validation loss."""

    @abstractmethod
    def sample(
        self, model_fn: ModelFn, noise: torch.Tensor, num_steps: Optional[int] = None, progress: bool = False,
        x_given: Optional[torch.Tensor] = None, frame_mask: Optional[torch.Tensor] = None,
        latent_size: Optional[Sequence[float]] = None, **cond,
    ) -> torch.Tensor:
        """Integrate from pure ``noise`` to a clean sample. With ``frame_mask`` ``[B, T]`` the
        frames it marks are taken from the clean latents ``x_given`` (same shape as ``noise``)
        at every step and in the result. ``latent_size``: the ``(t, h, w)`` the requested video
        has in latent units, when its pixel size is not a whole number of latents (Open-Sora's
        240×426 is 30×53.25): a resolution-aware shift reads it instead of ``noise``'s shape."""

    @abstractmethod
    def noise_level(self, t_net: torch.Tensor) -> torch.Tensor:
        """The time the network sees (``model_fn``'s ``t``) as a fraction of the process, in
        [0, 1] (1 = pure noise): what guidance schedules (``lvdm.diffusion.guidance``) read."""

    @staticmethod
    def _given(noise: torch.Tensor, x_given: Optional[torch.Tensor], frame_mask: Optional[torch.Tensor]):
        """Checked ``(x_given, frame_mask)``, or ``(None, None)`` when nothing is given."""
        if frame_mask is None:
            return None, None
        frame_mask = check_frame_mask(frame_mask, noise)
        if x_given is None or x_given.shape != noise.shape:
            got = None if x_given is None else tuple(x_given.shape)
            raise ValueError(f"a frame_mask needs x_given, the clean latents, of shape {tuple(noise.shape)}; got {got}")
        return x_given.to(noise.device), frame_mask


def _check(owner: str, **rules: tuple) -> None:
    """Raise ``ValueError`` naming the first argument whose rule fails: ``name=(value, ok, rule)``."""
    for name, (value, ok, rule) in rules.items():
        if not ok:
            raise ValueError(f"{owner}.{name} must be {rule}, got {value}")


def linear_quadratic_times(num_steps: int, threshold_noise: float = 0.025) -> torch.Tensor:
    """Genmo's Mochi 1 sampling times ``t_0 = 1 > … > t_{N-1}`` (float64, without the final 0).

    The removed noise ``u_i = 1 - t_i`` grows linearly, ``threshold_noise · i / L``, over the
    first ``L = N // 2`` steps, then along the quadratic that continues it with the same slope
    and reaches 1 at ``i = N``: ``u_i = τ i / L + (L - τ N) · max(i - L, 0)² / (L (N - L)²)``.
    """
    if num_steps < 2:
        raise ValueError(f"the linear_quadratic schedule needs at least 2 steps, got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64)
    lin = num_steps // 2
    bend = (lin - threshold_noise * num_steps) / (lin * (num_steps - lin) ** 2)
    return 1 - (threshold_noise * i / lin + bend * (i - lin).clamp(min=0) ** 2)


class RectifiedFlow(Objective):
    """Rectified flow / flow matching (SD3, Open-Sora 1.2).

    ``x_t = (1 - t) x0 + t ε`` with ``t ∈ [0, 1]`` (1 = pure noise); the network predicts the
    velocity ``v = ε - x0``. Training times are logit-normal (SD3); an optional shift
    ``t' = s t / (1 + (s - 1) t)`` moves them (and the sampling grid) towards noise, with
    ``s = shift · sqrt(numel / base_numel)`` when ``resolution_aware`` (larger videos need
    more noise to destroy the same structure). With ``base_area`` set, the resolution-aware
    shift is Open-Sora 1.2's, on the latent grid ``(t, h, w)`` of each batch:
    ``s = shift · sqrt(h·w / base_area) · sqrt(t / base_frames)`` — it grows with the
    resolution and with the square root of the frame count, so every bucket of a bucketed run
    (and an image, ``t = 1``) gets its own. The network sees ``t · time_scale``.

    ``prediction="sample"`` makes the network predict the clean sample ``x0`` instead of the
    velocity, converted to ``v = (x_t - x0) / t`` for the loss and the sampler (JiT, Li & He
    2025). With large patches of raw pixels the velocity is mostly noise, which a token
    narrower than its patch cannot carry; the clean sample lies on a low-dimensional manifold
    that it can. ``min_t`` bounds the ``1 / t`` of that conversion.

    ``target`` is the sign convention of a velocity prediction: lvdm's (and SD3's) ``ε − x0``,
    or Open-Sora 1.2's ``x0 − ε`` (its published weights predict that). The training target
    and the sampler's use of the prediction follow it together.

    Args:
        logit_mean: mean of the logit-normal timestep distribution.
        logit_std: standard deviation of the logit-normal distribution.
        shift: timestep shift ``s`` (1 = none).
        resolution_aware: scale the shift by the latent size relative to ``base_numel``.
        base_numel: latent elements per sample (C·T·H·W) at which the shift equals ``shift``
            (used when ``base_area`` is not set).
        base_area: latent ``h·w`` at which the spatial factor is 1 (Open-Sora 1.2: 512×512
            pixels, i.e. 64×64 latents for an 8× VAE); ``None`` uses ``base_numel``.
        base_frames: latent frame count at which the temporal factor is 1 (Open-Sora 1.2: 1).
        num_sampling_steps: default number of Euler steps.
        time_scale: factor applied to ``t`` before it reaches the network.
        prediction: what the network outputs: ``velocity`` (ε − x0) or ``sample`` (x0).
        min_t: lower bound on ``t`` when converting a sample prediction to a velocity.
        target: with ``prediction="velocity"``: ``eps_minus_x0`` (ε − x0) or ``x0_minus_eps``
            (x0 − ε, Open-Sora 1.2).
        token_shift: ``none``, ``opensora2`` or ``flux`` (see above; replaces ``resolution_aware``).
        shift_anchors: ``(n0, s0, n1, s1)`` of ``token_shift`` (Open-Sora 2.0: 256 → 1, 4096 → 3).
        token_patch: the ``(pt, ph, pw)`` latent patch of one token, for ``token_shift``.
        shift_terminal: the last nonzero time of the sampling grid (None: no stretch).
        sampler: ``euler`` or ``unipc`` (needs ``time_scale`` 1000 and velocity prediction).
        schedule: the Euler grid before the shift: ``uniform`` (equal steps of ``t``) or
            ``linear_quadratic`` (Mochi 1's: see :func:`linear_quadratic_times`).
        threshold_noise: the noise level the ``linear_quadratic`` grid's linear half removes.
    """

    def __init__(
        self,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: float = 1.0,
        resolution_aware: bool = False,
        base_numel: int = 4 * 32 * 32,
        num_sampling_steps: int = 30,
        time_scale: float = 1000.0,
        prediction: Literal["velocity", "sample"] = "velocity",
        min_t: float = 0.05,
        base_area: Optional[int] = None,
        base_frames: int = 1,
        target: Literal["eps_minus_x0", "x0_minus_eps"] = "eps_minus_x0",
        token_shift: Literal["none", "opensora2", "flux"] = "none",
        shift_anchors: Sequence[float] = (256, 1.0, 4096, 3.0),
        token_patch: Sequence[int] = (1, 2, 2),
        shift_terminal: Optional[float] = None,
        sampler: Literal["euler", "unipc"] = "euler",
        schedule: Literal["uniform", "linear_quadratic"] = "uniform",
        threshold_noise: float = 0.025,
    ):
        self._check_sampling(token_shift, shift_anchors, token_patch, shift_terminal, sampler, time_scale, prediction)
        _check("RectifiedFlow", schedule=(schedule, schedule in ("uniform", "linear_quadratic") and (
                   schedule == "uniform" or sampler == "euler"), "uniform or linear_quadratic (the latter: euler only)"),
               threshold_noise=(threshold_noise, 0 < threshold_noise < 1, "in (0, 1)"))
        self.schedule, self.threshold_noise = schedule, threshold_noise
        self.token_shift, self.shift_anchors = token_shift, tuple(float(a) for a in shift_anchors)
        self.token_patch, self.shift_terminal, self.sampler = tuple(int(p) for p in token_patch), shift_terminal, sampler
        if prediction not in ("velocity", "sample"):
            raise ValueError(f"prediction must be velocity or sample, got {prediction!r}")
        if target not in ("eps_minus_x0", "x0_minus_eps"):
            raise ValueError(f"RectifiedFlow.target must be eps_minus_x0 or x0_minus_eps, got {target!r}")
        self.target = target
        _check("RectifiedFlow", shift=(shift, shift > 0, "> 0 (1: no shift)"),
               logit_std=(logit_std, logit_std > 0, "> 0"),
               num_sampling_steps=(num_sampling_steps, num_sampling_steps >= 1, ">= 1"),
               time_scale=(time_scale, time_scale > 0, "> 0"),
               min_t=(min_t, 0 <= min_t < 1, "in [0, 1)"),
               base_numel=(base_numel, base_numel >= 1, ">= 1"),
               base_area=(base_area, base_area is None or base_area >= 1, ">= 1 (or None)"),
               base_frames=(base_frames, base_frames >= 1, ">= 1"))
        self.prediction = prediction
        self.min_t = min_t
        self.logit_mean = logit_mean
        self.logit_std = logit_std
        self.shift = shift
        self.resolution_aware = resolution_aware
        self.base_numel = base_numel
        self.base_area, self.base_frames = base_area, base_frames
        self.num_sampling_steps = num_sampling_steps
        self.time_scale = time_scale

    @staticmethod
    def _check_sampling(token_shift, anchors, patch, terminal, sampler, time_scale, prediction) -> None:
        anchors, patch = tuple(anchors), tuple(patch)
        _check("RectifiedFlow",
               token_shift=(token_shift, token_shift in ("none", "opensora2", "flux"), "none, opensora2 or flux"),
               shift_anchors=(anchors, len(anchors) == 4 and anchors[0] != anchors[2],
                              "(n0, s0, n1, s1) with n0 != n1"),
               token_patch=(patch, len(patch) == 3 and all(int(p) >= 1 for p in patch), "three sizes >= 1"),
               shift_terminal=(terminal, terminal is None or 0 <= terminal < 1, "in [0, 1) (or None)"),
               sampler=(sampler, sampler in ("euler", "unipc"), "euler or unipc"))
        if sampler == "unipc" and (time_scale != 1000 or prediction != "velocity"):
            raise ValueError("RectifiedFlow.sampler='unipc' runs diffusers' 1000-step flow scheduler: it needs "
                             f"time_scale=1000 and prediction='velocity', got {time_scale} and {prediction!r}")

    def token_count_shift(self, t: int, h: int, w: int) -> float:
        """The ``token_shift`` rule's shift on a latent grid of ``t × h × w`` (see the class docstring)."""
        n0, s0, n1, s1 = self.shift_anchors
        pt, ph, pw = self.token_patch
        slope = (s1 - s0) / (n1 - n0)
        if self.token_shift == "opensora2":
            return self.shift * (s0 + slope * ((h * w) // (ph * pw) - n0)) * math.sqrt(t)
        return math.exp(s0 + slope * (t * h * w / (pt * ph * pw) - n0))

    def effective_shift(self, x: torch.Tensor, latent_size: Optional[Sequence[float]] = None) -> float:
        if self.token_shift != "none":  # the sources count the tokens of the latents they sample
            return self.token_count_shift(*x.shape[-3:])
        if not self.resolution_aware:
            return self.shift
        if self.base_area is not None:
            t, h, w = x.shape[-3:] if latent_size is None else latent_size
            return self.shift * math.sqrt(h * w / self.base_area) * math.sqrt(t / self.base_frames)
        return self.shift * math.sqrt(x[0].numel() / self.base_numel)

    @staticmethod
    def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
        return shift * t / (1 + (shift - 1) * t)

    def velocity(self, model_fn: ModelFn, x_t: torch.Tensor, t: torch.Tensor,
                 frame_mask: Optional[torch.Tensor] = None, **cond) -> torch.Tensor:
        """The network's velocity estimate at ``(x_t, t)`` whatever it predicts; with a
        ``frame_mask`` the network sees per-frame times (0 on given frames)."""
        if frame_mask is not None:
            t = frame_timesteps(t, frame_mask)  # [B, T]
        return self.output_velocity(model_fn(x_t, t * self.time_scale, **cond), x_t, t)

    def _clamped_time(self, t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """``max(t, min_t)`` (``[B]`` or per-frame ``[B, T]``) shaped to broadcast over ``x_t``."""
        tb = t.clamp(min=self.min_t).to(x_t.dtype)
        return tb[:, None, :, None, None] if tb.ndim == 2 else tb.view(-1, *([1] * (x_t.ndim - 1)))

    def output_velocity(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity ``ε − x0`` that the network's output ``out`` at ``(x_t, t)`` stands for
        (``t`` in [0, 1], ``[B]`` or per-frame ``[B, T]``), whatever it predicts."""
        if self.prediction == "velocity":
            return out if self.target == "eps_minus_x0" else -out
        return (x_t - out) / self._clamped_time(t, x_t)

    def velocity_output(self, v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`output_velocity`: the network output that stands for ``v``."""
        if self.prediction == "velocity":
            return v if self.target == "eps_minus_x0" else -v
        return x_t - self._clamped_time(t, x_t) * v

    def noise_level(self, t_net: torch.Tensor) -> torch.Tensor:
        """The network's time input as a fraction of pure noise: ``t`` in [0, 1]."""
        return t_net / self.time_scale

    def sample_time(self, x0: torch.Tensor) -> torch.Tensor:
        u = torch.randn(x0.shape[0], device=x0.device) * self.logit_std + self.logit_mean
        return self.shift_time(torch.sigmoid(u), self.effective_shift(x0))

    def training_loss(self, model_fn: ModelFn, x0: torch.Tensor, noise: Optional[torch.Tensor] = None,
                      frame_mask: Optional[torch.Tensor] = None, **cond) -> torch.Tensor:
        noise = torch.randn_like(x0) if noise is None else noise
        return self.loss_at(model_fn, x0, noise, self.sample_time(x0), frame_mask, **cond).mean()

    def loss_at(self, model_fn: ModelFn, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                frame_mask: Optional[torch.Tensor] = None, **cond) -> torch.Tensor:
        """Velocity MSE of each sample at times ``t`` ``[B]`` in [0, 1] (1 = pure noise); the
        network's own target is ``ε − x0`` or ``x0 − ε`` (``target``), the same squared error."""
        tb = t.view(-1, *([1] * (x0.ndim - 1)))
        x_t = (1 - tb) * x0 + tb * noise
        if frame_mask is not None:
            frame_mask = check_frame_mask(frame_mask, x0)
            x_t = keep_given(x_t, x0, frame_mask)
        pred = self.velocity(model_fn, x_t, t, frame_mask, **cond)
        return masked_mse(pred, noise - x0, frame_mask)

    def fixed_timesteps(self, num: int) -> torch.Tensor:
        """``t = k / (num + 1)``, ``k = 1..num`` (unshifted: equal steps of the noise level)."""
        return torch.linspace(0.0, 1.0, num + 2)[1:-1]

    def timesteps(self, num_steps: int, x: torch.Tensor, latent_size: Optional[Sequence[float]] = None) -> torch.Tensor:
        """The Euler grid ``1 = t_0 > … > t_N = 0`` (``schedule``, shifted, stretched to ``shift_terminal``)."""
        if self.schedule == "linear_quadratic":
            base = torch.cat([linear_quadratic_times(num_steps, self.threshold_noise), torch.zeros(1, dtype=torch.float64)])
        else:
            base = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        t = self.shift_time(base, self.effective_shift(x, latent_size))
        if self.shift_terminal is not None and t[-2] < 1:  # one step: nothing to stretch
            t[:-1] = 1 - (1 - t[:-1]) * (1 - self.shift_terminal) / (1 - t[-2])
        return t

    @torch.no_grad()
    def sample(
        self, model_fn: ModelFn, noise: torch.Tensor, num_steps: Optional[int] = None, progress: bool = False,
        x_given: Optional[torch.Tensor] = None, frame_mask: Optional[torch.Tensor] = None,
        latent_size: Optional[Sequence[float]] = None, **cond,
    ) -> torch.Tensor:
        """Euler (or UniPC) integration of ``dx/dt = v`` from ``t = 1`` to ``t = 0`` (given frames
        held at their clean latents)."""
        x_given, frame_mask = self._given(noise, x_given, frame_mask)
        if self.sampler == "unipc":
            return self._sample_unipc(model_fn, noise, num_steps or self.num_sampling_steps, progress, x_given,
                                      frame_mask, self.effective_shift(noise, latent_size), cond)
        grid = self.timesteps(num_steps or self.num_sampling_steps, noise, latent_size)
        x = noise
        for i in tqdm(range(len(grid) - 1), disable=not progress, desc="sampling"):
            if frame_mask is not None:
                x = keep_given(x, x_given, frame_mask)
            t = torch.full((x.shape[0],), float(grid[i]), device=x.device)
            v = self.velocity(model_fn, x, t, frame_mask, **cond)
            x = x + float(grid[i + 1] - grid[i]) * v.to(x.dtype)
        return x if frame_mask is None else keep_given(x, x_given, frame_mask)

    def unipc_scheduler(self, shift: float, terminal: Optional[float] = None):
        """A fresh diffusers ``UniPCMultistepScheduler`` in the flow form Wan samples with (its
        ``WanPipeline`` folders' ``scheduler_config.json``): flow sigmas shifted by ``shift``."""
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                                       flow_shift=shift, solver_order=2, solver_type="bh2", predict_x0=True,
                                       lower_order_final=True, final_sigmas_type="zero", shift_terminal=terminal)

    def _sample_unipc(self, model_fn: ModelFn, noise: torch.Tensor, num_steps: int, progress: bool,
                      x_given: Optional[torch.Tensor], frame_mask: Optional[torch.Tensor], shift: float,
                      cond: dict) -> torch.Tensor:
        """UniPC on the flow ODE: the network sees the scheduler's whole-number timesteps."""
        scheduler = self.unipc_scheduler(shift, self.shift_terminal)
        scheduler.set_timesteps(num_steps, device=noise.device)
        x = noise
        for step in tqdm(scheduler.timesteps, disable=not progress, desc="sampling"):
            if frame_mask is not None:
                x = keep_given(x, x_given, frame_mask)
            t = torch.full((x.shape[0],), float(step) / self.time_scale, device=x.device)
            v = self.velocity(model_fn, x, t, frame_mask, **cond)
            x = scheduler.step(v.to(x.dtype), step, x).prev_sample
        return x if frame_mask is None else keep_given(x, x_given, frame_mask)


class DDPM(Objective):
    """Denoising diffusion (DDPM) with ε or v prediction; sampling with DDIM or DPM-Solver++.

    The discrete process and the samplers are diffusers' schedulers, so a model trained here
    samples with any diffusers scheduler built from ``train_scheduler.config``.

    Args:
        prediction_type: ``epsilon`` or ``v_prediction``.
        num_train_timesteps: length of the discrete chain.
        beta_schedule: ``linear``, ``scaled_linear`` or ``squaredcos_cap_v2``.
        beta_start: first β of the linear schedules.
        beta_end: last β of the linear schedules.
        sampler: ``ddim`` or ``dpm_solver`` (DPM-Solver++ multistep).
        num_sampling_steps: default number of sampler steps.
        snr_shift_scale: CogVideoX's SNR shift ``ᾱ / (s + (1 - s) ᾱ)`` of the chain (1: none).
        zero_terminal_snr: rescale the chain's ``ᾱ`` to reach 0 at the last timestep (Lin et al. 2024).
            Either of these two makes the chain diffusers' ``CogVideoXDDIMScheduler``'s (shift,
            then rescale), trained on and sampled with that scheduler (``sampler="ddim"``) or with
            ``CogVideoXDPMScheduler`` (``sampler="dpm_solver"``: a stochastic 2nd-order DPM-Solver++).
        noise_seed: the seed of the noise a stochastic sampler adds (restarted at every ``sample``).
        timestep_spacing: the sampling timesteps: ``leading``, ``trailing`` or ``linspace`` (diffusers');
            None: the sampler's own default (DDIM's ``leading``, DPM-Solver's ``linspace``).
        set_alpha_to_one: DDIM's last step goes to ``ᾱ = 1`` (else to ``ᾱ_0``).
    """

    def __init__(
        self,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        num_train_timesteps: int = 1000,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        sampler: Literal["ddim", "dpm_solver"] = "ddim",
        num_sampling_steps: int = 50,
        snr_shift_scale: float = 1.0,
        zero_terminal_snr: bool = False,
        timestep_spacing: Optional[Literal["leading", "trailing", "linspace"]] = None,
        set_alpha_to_one: bool = False,
        noise_seed: int = 0,
    ):
        from diffusers import CogVideoXDDIMScheduler, DDPMScheduler

        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
        if sampler not in ("ddim", "dpm_solver"):
            raise ValueError(f"sampler must be ddim or dpm_solver, got {sampler!r}")
        _check("DDPM", num_train_timesteps=(num_train_timesteps, num_train_timesteps >= 1, ">= 1"),
               num_sampling_steps=(num_sampling_steps, 1 <= num_sampling_steps <= num_train_timesteps,
                                   f"in [1, num_train_timesteps={num_train_timesteps}]"),
               beta_start=(beta_start, 0 < beta_start < 1, "in (0, 1)"),
               beta_end=(beta_end, beta_start <= beta_end < 1, f"in [beta_start={beta_start}, 1)"),
               snr_shift_scale=(snr_shift_scale, snr_shift_scale > 0, "> 0 (1: no shift)"),
               timestep_spacing=(timestep_spacing, timestep_spacing in (None, "leading", "trailing", "linspace"),
                                 "leading, trailing or linspace (or None)"))
        self.prediction_type = prediction_type
        self.sampler = sampler
        self.num_sampling_steps = num_sampling_steps
        self.set_alpha_to_one, self.noise_seed = set_alpha_to_one, noise_seed
        chain = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, beta_start=beta_start,
                     beta_end=beta_end, prediction_type=prediction_type, clip_sample=False)
        if timestep_spacing is not None:  # else unset: each sampler's from_config keeps its own default
            chain["timestep_spacing"] = timestep_spacing
        self.cogvideox_chain = snr_shift_scale != 1.0 or zero_terminal_snr
        self.train_scheduler = (CogVideoXDDIMScheduler(**chain, set_alpha_to_one=set_alpha_to_one,
                                                       rescale_betas_zero_snr=zero_terminal_snr,
                                                       snr_shift_scale=snr_shift_scale)
                                if self.cogvideox_chain else DDPMScheduler(**chain))

    def noise_level(self, t_net: torch.Tensor) -> torch.Tensor:
        """The network's timestep as a fraction of the chain: ``t / num_train_timesteps``."""
        return t_net / self.train_scheduler.config.num_train_timesteps

    def make_sampler(self):
        """A fresh diffusers scheduler for sampling (schedulers keep per-run state)."""
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        if self.cogvideox_chain:
            from diffusers import CogVideoXDPMScheduler

            dpm = self.sampler == "dpm_solver"
            return (CogVideoXDPMScheduler if dpm else type(self.train_scheduler)).from_config(self.train_scheduler.config)
        if self.sampler == "ddim":
            return DDIMScheduler.from_config(self.train_scheduler.config, set_alpha_to_one=self.set_alpha_to_one)
        return DPMSolverMultistepScheduler.from_config(self.train_scheduler.config, algorithm_type="dpmsolver++")

    def training_loss(self, model_fn: ModelFn, x0: torch.Tensor, noise: Optional[torch.Tensor] = None,
                      frame_mask: Optional[torch.Tensor] = None, **cond) -> torch.Tensor:
        noise = torch.randn_like(x0) if noise is None else noise
        n = self.train_scheduler.config.num_train_timesteps
        t = torch.randint(0, n, (x0.shape[0],), device=x0.device)
        return self.loss_at(model_fn, x0, noise, t, frame_mask, **cond).mean()

    def loss_at(self, model_fn: ModelFn, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                frame_mask: Optional[torch.Tensor] = None, **cond) -> torch.Tensor:
        """ε or v MSE of each sample at integer timesteps ``t`` ``[B]`` in ``[0, num_train_timesteps)``
        (given frames: clean latents at timestep 0, as Open-Sora 1.1's masked IDDPM)."""
        t = t.long()
        x_t = self.train_scheduler.add_noise(x0, noise, t)
        target = noise if self.prediction_type == "epsilon" else self.train_scheduler.get_velocity(x0, noise, t)
        t_in = t.float()
        if frame_mask is not None:
            frame_mask = check_frame_mask(frame_mask, x0)
            x_t = keep_given(x_t, x0, frame_mask)
            t_in = frame_timesteps(t_in, frame_mask)
        pred = model_fn(x_t, t_in, **cond)
        return masked_mse(pred, target, frame_mask)

    def fixed_timesteps(self, num: int) -> torch.Tensor:
        """``num`` evenly spaced integer timesteps strictly inside ``[0, num_train_timesteps]``
        (Open-Sora 1.2's evaluation grid)."""
        n = self.train_scheduler.config.num_train_timesteps
        return torch.linspace(0, n, num + 2)[1:-1].round().long().clamp(max=n - 1)

    @torch.no_grad()
    def sample(
        self, model_fn: ModelFn, noise: torch.Tensor, num_steps: Optional[int] = None, progress: bool = False,
        x_given: Optional[torch.Tensor] = None, frame_mask: Optional[torch.Tensor] = None,
        latent_size: Optional[Sequence[float]] = None, **cond,
    ) -> torch.Tensor:
        x_given, frame_mask = self._given(noise, x_given, frame_mask)
        scheduler = self.make_sampler()
        scheduler.set_timesteps(num_steps or self.num_sampling_steps, device=noise.device)
        x = noise * scheduler.init_noise_sigma
        previous = (None, None, torch.Generator(noise.device).manual_seed(self.noise_seed))
        for t in tqdm(scheduler.timesteps, disable=not progress, desc="sampling"):
            t_in = t.float().expand(x.shape[0]).to(x.device)
            if frame_mask is not None:  # given frames: clean, timestep 0 (the scheduler's update of them is discarded)
                x = keep_given(x, x_given, frame_mask)
                t_in = frame_timesteps(t_in, frame_mask)
            model_in = scheduler.scale_model_input(x, t)
            pred = model_fn(model_in, t_in, **cond)
            x, previous = self._step(scheduler, pred, t, x, previous)
        return x if frame_mask is None else keep_given(x, x_given, frame_mask)

    def _step(self, scheduler, pred: torch.Tensor, t: torch.Tensor, x: torch.Tensor, previous: tuple):
        """One scheduler step: ``(x_prev, previous)``. ``CogVideoXDPMScheduler`` also takes the
        last step's timestep and clean estimate (``previous``) and its noise generator."""
        from diffusers import CogVideoXDPMScheduler

        if not isinstance(scheduler, CogVideoXDPMScheduler):
            return scheduler.step(pred, t, x).prev_sample, previous
        t_back, x0_back, generator = previous
        x, x0 = scheduler.step(pred, x0_back, t, t_back, x, generator=generator, return_dict=False)
        return x, (t, x0, generator)
