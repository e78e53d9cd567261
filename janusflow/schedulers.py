"""The ODE solvers of generation as diffusers schedulers.

The pipeline steps every solver through a diffusers ``SchedulerMixin``; our velocity enters through
:func:`janusflow.flow.as_scheduler_model` (sigma = 1 - t, model output -v). The solver names of
:class:`janusflow.sampler.SamplerConfig` map to

    euler     diffusers' ``FlowMatchEulerDiscreteScheduler``  (the released sampler)
    heun      diffusers' ``FlowMatchHeunDiscreteScheduler``   (trapezoid steps; its last step is Euler,
              so no velocity is ever read at sigma = 0)
    midpoint  :class:`FlowMatchMidpointScheduler` (ours, below)

Time grid. Every scheduler that takes ``sigmas`` gets the release's grid, sigma_k = 1 - k/n for
k < n (then 0), exactly as flux's pipeline passes it; the scheduler's ``shift`` config maps it
through ``sigma' = s*sigma / (1 + (s - 1)*sigma)``. So ``shift = 1`` is the released uniform grid and
``shift = s`` is :func:`janusflow.sampler.time_grid` with ``schedule="shifted"``: the grid lives in
the scheduler's config, saved with the pipeline. A scheduler without a ``sigmas`` argument (Heun)
uses its own grid from 1 to 1/num_train_timesteps under the same shift.

Precision. diffusers keeps ``sigmas`` in fp32, where t = 1 - sigma near t = 0 loses bits: 1 - fp32(29/30)
is off by 3e-8, 3e-5 on the model's 0..1000 time scale, and sigma_{k+1} - sigma_k is not the released
step 1/n. :func:`set_timesteps` therefore keeps the same grid in float64 (the values the scheduler
computed, checked to agree to fp32): the Euler scheduler then makes the released update
``z + fp32(1/n) * v`` at the released times, bit for bit. Our midpoint scheduler keeps float64 itself.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from .errors import InputError
from .flow import time_from_sigma


@dataclass
class FlowMatchMidpointSchedulerOutput(BaseOutput):
    prev_sample: torch.FloatTensor  # the next model input: the midpoint (first stage) or the step's end


class FlowMatchMidpointScheduler(SchedulerMixin, ConfigMixin):
    """The explicit midpoint rule on the flow-matching ODE, in diffusers' scheduler protocol.

    A step from sigma_k to sigma_{k+1} (h = sigma_{k+1} - sigma_k < 0) reads the model twice:

        z_mid  = z + h/2 * f(z, sigma_k)                   (first ``step`` call: returns z_mid)
        z_next = z + h   * f(z_mid, (sigma_k + sigma_{k+1}) / 2)   (second call)

    so ``timesteps`` interleaves each grid point with its step's midpoint (2n entries) and
    ``sigmas[step_index]`` is always the sigma of the sample ``step`` returned.
    """

    _compatibles = []
    order = 2

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0):
        self._step_index = None
        self._begin_index = None
        self.set_timesteps(1)

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    @property
    def state_in_first_order(self) -> bool:
        return self._sample is None

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: list[float] | None = None) -> None:
        """Grid sigma_0 > ... > sigma_{n-1} (default: 1 - k/n), shifted by the config's ``shift``, then 0."""
        if sigmas is None:
            if num_inference_steps is None:
                raise ValueError("pass num_inference_steps or sigmas")
            sigmas = 1.0 - np.arange(num_inference_steps) / num_inference_steps
        sigmas = np.asarray(sigmas, dtype=np.float64)
        if num_inference_steps is not None and len(sigmas) != num_inference_steps:
            raise ValueError(f"{len(sigmas)} sigmas for {num_inference_steps} steps")
        s = self.config.shift
        grid = np.append(s * sigmas / (1 + (s - 1) * sigmas), 0.0)  # (n+1,)
        middle = (grid[:-1] + grid[1:]) / 2
        full = np.empty(2 * len(sigmas) + 1)
        full[0:-1:2], full[1::2], full[-1] = grid[:-1], middle, 0.0  # s0, m0, s1, m1, ..., 0
        self.num_inference_steps = len(sigmas)
        self.sigmas = torch.from_numpy(full).to(dtype=_grid_dtype(device), device=device)
        self.timesteps = self.sigmas[:-1] * self.config.num_train_timesteps
        self._sample, self._dt = None, None
        self._step_index, self._begin_index = None, None

    def index_for_timestep(self, timestep: float | torch.Tensor) -> int:
        return int((self.timesteps == timestep).nonzero()[0].item())

    def scale_noise(self, sample: torch.Tensor, timestep: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The forward process at ``timestep``: sigma * noise + (1 - sigma) * sample."""
        sigma = self.sigmas[self.index_for_timestep(timestep)]
        return sigma * noise + (1.0 - sigma) * sample

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             return_dict: bool = True) -> FlowMatchMidpointSchedulerOutput | tuple:
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        if self.state_in_first_order and self._step_index % 2:
            raise ValueError("a midpoint step starts at a grid point (an even index of timesteps)")
        sample = sample.to(torch.float32)
        i = self._step_index
        if self.state_in_first_order:  # at sigma_k: half a step to the midpoint
            self._sample, self._dt = sample, self.sigmas[i + 2] - self.sigmas[i]
            prev_sample = sample + (self.sigmas[i + 1] - self.sigmas[i]) * model_output
        else:  # at the midpoint: the whole step from the stored sample
            prev_sample = self._sample + self._dt * model_output
            self._sample, self._dt = None, None
        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)
        return FlowMatchMidpointSchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def _grid_dtype(device: str | torch.device | None) -> torch.dtype:
    return torch.float32 if device is not None and torch.device(device).type == "mps" else torch.float64


SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "euler": FlowMatchEulerDiscreteScheduler,
    "heun": FlowMatchHeunDiscreteScheduler,
    "midpoint": FlowMatchMidpointScheduler,
}


def make_scheduler(solver: str = "euler", shift: float = 1.0) -> SchedulerMixin:
    """A fresh scheduler for a solver name; ``shift = 1`` is the released uniform grid."""
    if solver not in SCHEDULERS:
        raise InputError(f"solver must be one of {sorted(SCHEDULERS)}, got {solver!r}")
    return SCHEDULERS[solver](shift=float(shift))


def solver_name(scheduler: SchedulerMixin) -> str | None:
    """The solver name of a scheduler's class (None for one outside :data:`SCHEDULERS`)."""
    return next((name for name, cls in SCHEDULERS.items() if type(scheduler) is cls), None)


def release_sigmas(num_inference_steps: int) -> np.ndarray:
    """sigma_k = 1 - k/n, k = 0..n-1: the released grid t_k = k/n (flux's pipeline passes the same)."""
    return 1.0 - np.arange(num_inference_steps) / num_inference_steps


def dynamic_shift_mu(config, image_seq_len: int) -> float:
    """flux's resolution-dependent shift: mu linear in the number of image tokens."""
    slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    return image_seq_len * slope + config.base_shift - slope * config.base_image_seq_len


def set_timesteps(scheduler: SchedulerMixin, num_inference_steps: int, device: torch.device | str | None = None,
                  image_seq_len: int | None = None) -> None:
    """``scheduler.set_timesteps`` on the release's grid where the scheduler takes ``sigmas`` (its own grid
    otherwise); a scheduler with ``use_dynamic_shifting`` gets flux's ``mu`` for ``image_seq_len`` tokens."""
    accepts = inspect.signature(scheduler.set_timesteps).parameters
    kwargs = {}
    if "sigmas" in accepts:
        kwargs["sigmas"] = release_sigmas(num_inference_steps)
    else:
        kwargs["num_inference_steps"] = num_inference_steps
    if getattr(scheduler.config, "use_dynamic_shifting", False):
        if image_seq_len is None:
            raise InputError("a scheduler with use_dynamic_shifting needs the number of image tokens")
        kwargs["mu"] = dynamic_shift_mu(scheduler.config, image_seq_len)
    scheduler.set_timesteps(device=device, **kwargs)
    if "sigmas" in kwargs:
        _keep_float64_grid(scheduler, kwargs["sigmas"], device)


def _keep_float64_grid(scheduler: SchedulerMixin, sigmas: np.ndarray, device) -> None:
    """The Euler scheduler's grid (the plain shift of ``sigmas``) in float64; any other configuration (sigma
    conversions, dynamic shifting) or a float64 grid that is not the scheduler's own is left as it is."""
    config = scheduler.config
    plain = type(scheduler) is FlowMatchEulerDiscreteScheduler and not any(
        config.get(flag) for flag in ("use_dynamic_shifting", "shift_terminal", "use_karras_sigmas",
                                      "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas"))
    if not plain or _grid_dtype(device) != torch.float64:
        return
    s = float(scheduler.shift)
    grid = torch.from_numpy(np.append(s * sigmas / (1 + (s - 1) * sigmas), 0.0)).to(device)  # (n+1,) float64
    if grid.shape != scheduler.sigmas.shape or (grid.float() - scheduler.sigmas).abs().max() > 1e-6:
        return
    scheduler.sigmas = grid
    scheduler.timesteps = grid[:-1] * config.num_train_timesteps


def strength_start_index(scheduler, num_inference_steps: int, strength: float) -> int:
    """The ``timesteps`` index where a flow of ``strength`` starts: the grid point t_k (k = 0..n) nearest
    to t = 1 - strength (a tie: the earlier); step k starts at index k * order, and k = n is past the last
    step. Strength 1 starts at t = 0 (all steps), strength 0 at t = 1 (none: the image's own latents)."""
    entries = len(scheduler.timesteps)
    index = [min(k * scheduler.order, entries) for k in range(num_inference_steps + 1)]
    times = [time_from_sigma(scheduler.sigmas[i]) for i in index]
    k = min(range(len(times)), key=lambda j: abs(times[j] - (1.0 - strength)))
    return index[k]
