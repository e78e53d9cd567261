"""Rectified flow: the math of both training and sampling, in one place.

Convention (the released sampler's): ``t = 0`` is noise, ``t = 1`` is data.
    x_t = t * x1 + (1 - t) * x0,      x0 ~ N(0, I),  x1 = VAE latent * scaling factor
    target velocity  v* = dx_t/dt = x1 - x0
    loss = E_t || v_theta(x_t, t) - (x1 - x0) ||^2
The model's time embedding reads ``t * TIME_SCALE`` (0..1000). Classifier-free guidance:
    v = w * v_cond - (w - 1) * v_uncond      (w = 1 is the conditional velocity alone)
diffusers' flow-matching schedulers use ``sigma = 1 - t`` and the velocity ``x0 - x1``;
:func:`as_scheduler_model` is the one place that converts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TIME_SCALE = 1000.0


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = t * x1 + (1 - t) * x0, with t of shape (B,)."""
    t = _expand(t, x1)
    return t * x1 + (1 - t) * x0


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    return x1 - x0


def sample_time(batch: int, distribution: str = "logit_normal", mean: float = 0.0, std: float = 1.0,
                generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Training times in (0, 1): ``logit_normal`` (t = sigmoid(N(mean, std))) or ``uniform``."""
    if distribution == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))
    if distribution == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    raise ValueError(f"unknown time distribution {distribution!r}; use 'logit_normal' or 'uniform'")


def guided_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance, in exactly the released form."""
    return w * v_cond - (w - 1) * v_uncond


def rectified_flow_loss(v_pred: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Mean squared error to the straight-line velocity, averaged over every element."""
    return torch.mean((v_pred.float() - velocity_target(x0, x1).float()) ** 2)


def as_scheduler_model(velocity: Callable[[torch.Tensor, float], torch.Tensor], num_train_timesteps: int = 1000
                       ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Our velocity field ``v(z, t)`` as diffusers' flow-matching schedulers read a model, the one place
    that converts between the conventions.

    The schedulers run sigma from 1 (noise) to 0 (data) with ``timestep = sigma * num_train_timesteps``
    and step ``z += (sigma_next - sigma) * model_output``. Here ``sigma = 1 - t``, so
    ``dz/dsigma = -dz/dt`` and the model output is ``-v``: the step is ``z += (t_next - t) * v``.
    """

    def model_output(z: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return -velocity(z, time_from_sigma(float(timestep) / num_train_timesteps))

    return model_output


def time_from_sigma(sigma: float | torch.Tensor) -> float:
    """t = 1 - sigma: where a scheduler's state (its ``sigmas[step_index]``) stands in our time."""
    return 1.0 - float(sigma)
