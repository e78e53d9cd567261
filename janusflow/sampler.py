"""The ODE sampler: solvers, time schedule, classifier-free guidance and the prompt KV cache.

Convention (:mod:`janusflow.flow`): ``t = 0`` is noise, ``t = 1`` is data; the sampler integrates

    dz/dt = v(z, t),    z(0) = z0 ~ N(0, I),    from t = 0 to t = 1,

with the guided velocity ``v = w * v_cond - (w - 1) * v_uncond`` (w = 1: v_cond alone, and the
unconditional rows are never run). The model's time input is ``t * 1000``.

Solvers on the grid ``t_0 = 0 < t_1 < ... < t_n = 1`` with ``h = t_{k+1} - t_k``:
    euler     z += h * v(z, t_k)                                   (as released; 1 evaluation)
    heun      z += h/2 * (v(z, t_k) + v(z + h v(z, t_k), t_{k+1}))  (trapezoid; 2 evaluations)
    midpoint  z += h * v(z + h/2 v(z, t_k), t_k + h/2)              (2 evaluations)
Euler evaluates t_k = k/n, never t = 1; the two second-order solvers are exact when v is linear
in t (and independent of z), where Euler is not.

Schedules: "uniform" t_k = k/n (as released); "shifted" maps sigma = 1 - t through
``sigma' = s*sigma / (1 + (s - 1)*sigma)`` (SD3's shift), which for s > 1 puts more, smaller
steps near the noise end.

Rows: conditional rows first, then (when guided) the matching unconditional rows built by
:func:`janusflow.processor.make_uncond`; both halves see the same latent.

Prompt cache: the prompt prefix (its first L-1 embeddings) never attends to later positions, so
its keys and values are computed once per call and reused at every step; a step feeds only
``[t_emb, N latent tokens]`` at positions L-1 .. L+N-1. The full-recompute path (the released
behaviour: every step runs the whole sequence) is kept as the reference; tests check they agree.

Position ids count from each row's first real token (its BOS), so a row of a left-padded batch
gets the positions it has alone; the zeros of an unconditional mask do not shift positions.

Guidance interval: with ``guidance_interval = (t_lo, t_hi)`` the velocity is guided only where
``t_lo <= t <= t_hi``; elsewhere it is ``v_cond`` alone and the unconditional rows are not run (those
evaluations run half the rows). None (the default) guides every step, as released.

Two loops drive the same guided field: :func:`integrate` (the solvers above, written out: the
reference) and :func:`denoise` (a diffusers scheduler, :mod:`janusflow.schedulers`: what the
pipeline runs). Tests check that the Euler scheduler reproduces the reference loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import InputError
from .flow import TIME_SCALE, guided_velocity
from .modeling import cache_kwargs
from .prompt_rows import generation_mask, position_ids_from_left_padding

SOLVERS = {"euler": 1, "heun": 2, "midpoint": 2}  # solver -> model evaluations per step
SCHEDULES = ("uniform", "shifted")


@dataclass
class SamplerConfig:
    num_steps: int = 30
    guidance_scale: float = 2.0
    solver: str = "euler"  # "euler" (as released), "heun" or "midpoint"
    schedule: str = "uniform"  # "uniform" (as released) or "shifted"
    shift: float = 3.0  # for "shifted": sigma' = s*sigma / (1 + (s-1)*sigma), sigma = 1 - t
    use_prompt_cache: bool = True  # False: the full-recompute reference path
    guidance_interval: tuple[float, float] | None = None  # guide only for t_lo <= t <= t_hi (None: always)

    def validate(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps <= 0:
            raise InputError(f"the number of steps must be a positive integer, got {self.num_steps!r}")
        w = self.guidance_scale
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise InputError(f"the guidance scale must be a finite number >= 0, got {w!r}")
        if self.solver not in SOLVERS:
            raise InputError(f"solver must be one of {sorted(SOLVERS)}, got {self.solver!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not (isinstance(self.shift, (int, float)) and math.isfinite(self.shift) and self.shift > 0):
            raise InputError(f"shift must be a positive number, got {self.shift!r}")
        check_guidance_interval(self.guidance_interval)

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    @property
    def evaluations(self) -> int:
        """Velocity evaluations (model calls) of one sampling run."""
        return self.num_steps * SOLVERS[self.solver]


def check_guidance_interval(interval) -> None:
    if interval is None:
        return
    ok = isinstance(interval, (tuple, list)) and len(interval) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in interval)
    if not ok or not 0 <= interval[0] <= interval[1] <= 1:
        raise InputError(f"guidance_interval must be (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1 (t = 0 noise, "
                         f"t = 1 data), got {interval!r}")


def time_grid(cfg: SamplerConfig) -> list[float]:
    """t_0 = 0 (noise) < t_1 < ... < t_n = 1 (data), as python floats (uniform: k / n, as released)."""
    n = cfg.num_steps
    ts = [k / n for k in range(n + 1)]
    if cfg.schedule == "shifted":
        s = cfg.shift
        ts = [1 - s * (1 - t) / (1 + (s - 1) * (1 - t)) for t in ts]
        ts[0], ts[-1] = 0.0, 1.0
    return ts


@dataclass
class SampleResult:
    latents: torch.Tensor  # (B, C, H, W) at t = 1, fp32
    attention_mask: torch.Tensor  # (R, L-1+1+N) the full-sequence key mask used
    t_steps: torch.Tensor | None = None  # (n,) t_k on the 0..1000 scale, when recorded
    trajectory: torch.Tensor | None = None  # (n+1, B, C, H, W), z_0 .. z_n
    velocities: torch.Tensor | None = None  # (n, B, C, H, W) the guided velocity of each step's update


class VelocityField:
    """v(z, t) for a fixed batch of prompt rows, with or without the prompt cache.

    ``tokens`` are (R, L) prompt ids ending with the generation tag; the tag's slot holds t_emb, so
    the LLM reads ``[embed(tokens)[:, :L-1], t_emb, N latent tokens]`` under ``mask``.
    """

    def __init__(self, model, tokens: torch.Tensor, prompt_mask: torch.Tensor, num_image_tokens: int,
                 use_cache: bool):
        self.model = model
        R, L = tokens.shape
        self.rows, self.prefix_len = R, L - 1
        self.prefix = model.embed_prompt(tokens)  # (R, L-1, D)
        self.mask = generation_mask(prompt_mask, num_image_tokens)  # (R, L-1+1+N); the t slot attends
        self.positions = position_ids_from_left_padding(self.mask)  # (R, L-1+1+N)
        self.prompt_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if use_cache:
            cache = self._new_cache()
            model.llm(inputs_embeds=self.prefix, attention_mask=self.mask[:, : L - 1],
                      position_ids=self.positions[:, : L - 1], use_cache=True, **cache_kwargs(model.llm, cache))
            self.prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]  # (R, heads, L-1, d) each

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.language_model.config)

    def _prompt_cache(self, rows: int):
        """A cache holding only the first ``rows`` rows of the prompt's keys/values (a step appends its
        own, so one per step)."""
        cache = self._new_cache()
        for i, (keys, values) in enumerate(self.prompt_kv):
            cache.update(keys[:rows], values[:rows], i)
        return cache

    def __call__(self, z: torch.Tensor, t: float) -> torch.Tensor:
        """Velocity (fp32) of the first ``z.shape[0]`` rows (all of them, or the conditional half);
        ``z`` is (r, C, H, W), ``t`` in [0, 1]. The model runs in its own dtype; the ODE state stays fp32
        (bf16 Euler updates would round away small steps)."""
        r = z.shape[0]
        t_in = torch.full((r,), t * TIME_SCALE, dtype=torch.float32, device=z.device)
        z = z.to(self.model.dtype)
        if self.prompt_kv is None:  # reference: the whole sequence, every step
            out = self.model.forward_generation(self.prefix[:r], z, t_in, attention_mask=self.mask[:r],
                                                position_ids=self.positions[:r])
        else:
            out = self.model.forward_generation(None, z, t_in, attention_mask=self.mask[:r],
                                                position_ids=self.positions[:r, self.prefix_len:],
                                                cache=self._prompt_cache(r))
        return out.velocity.float()


def with_guidance(field: VelocityField, w: float, interval: tuple[float, float] | None = None
                  ) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The guided velocity of B latents: w = 1 runs the field's B conditional rows alone; otherwise
    one batch of 2B rows (cond then uncond, the same latents) and v = w v_cond - (w - 1) v_uncond,
    for t inside ``interval`` (t_lo <= t <= t_hi) when one is given, v_cond alone outside it."""
    if w == 1.0:
        return field

    def velocity(z: torch.Tensor, t: float) -> torch.Tensor:
        if interval is not None and not interval[0] <= t <= interval[1]:
            return field(z, t)  # the B conditional rows only
        v_cond, v_uncond = field(torch.cat([z, z]), t).chunk(2)
        return guided_velocity(v_cond, v_uncond, w)

    return velocity


@torch.inference_mode()
def sample_latents(
    model,
    tokens: torch.Tensor,  # (R, L): B conditional rows, then B unconditional rows when guided
    attention_mask: torch.Tensor,  # (R, L) prompt mask, 1 = attend
    z0: torch.Tensor,  # (B, C, H, W) initial noise
    cfg: SamplerConfig,
    record: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SampleResult:
    """Integrate dz/dt = v(z, t) from t = 0 (noise, ``z0``) to t = 1 (data) with the reference loop."""
    velocity, field = guided_field(model, tokens, attention_mask, z0, cfg)
    z, trajectory, velocities = integrate(velocity, z0.float(), cfg, record, progress)
    result = SampleResult(latents=z, attention_mask=field.mask)
    if record:
        result.trajectory, result.velocities = trajectory, velocities
        result.t_steps = torch.tensor([t * TIME_SCALE for t in time_grid(cfg)[:-1]], dtype=torch.float32)
    return result


def guided_field(model, tokens: torch.Tensor, attention_mask: torch.Tensor, z0: torch.Tensor, cfg: SamplerConfig
                 ) -> tuple[Callable[[torch.Tensor, float], torch.Tensor], VelocityField]:
    """(guided velocity of the B latents ``z0`` is shaped like, the field of the prompt rows), the
    rows checked against the latents: B conditional rows, then B unconditional ones when guided."""
    cfg.validate()
    B = z0.shape[0]
    C = model.config.gen_vision.latent_channels
    if z0.ndim != 4 or z0.shape[1] != C:
        raise InputError(f"initial latents must be (B, {C}, H, W), got {tuple(z0.shape)}")
    if tokens.shape != attention_mask.shape:
        raise InputError(f"tokens {tuple(tokens.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
    if tokens.shape[0] not in ((2 * B,) if cfg.guided else (B, 2 * B)):
        raise InputError(f"{B} latents need {2 * B if cfg.guided else B} prompt rows "
                         f"(conditional{' then unconditional' if cfg.guided else ''}), got {tokens.shape[0]}")
    if not cfg.guided:
        tokens, attention_mask = tokens[:B], attention_mask[:B]  # w = 1: no unconditional pass at all
    N = model.config.gen_vision.grid_for(z0.shape[-1]) * model.config.gen_vision.grid_for(z0.shape[-2])
    field = VelocityField(model, tokens, attention_mask, N, cfg.use_prompt_cache)
    return with_guidance(field, cfg.guidance_scale, cfg.guidance_interval), field


def integrate(
    velocity: Callable[[torch.Tensor, float], torch.Tensor],
    z0: torch.Tensor,
    cfg: SamplerConfig,
    record: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The ODE loop alone: z(1) from z(0) = z0 under ``velocity(z, t)``; with ``record`` also the
    trajectory z_0 .. z_n (n+1, ...) and the velocity of each update (n, ...)."""
    ts = time_grid(cfg)
    z = z0
    trajectory, velocities = [z], []
    for k in range(cfg.num_steps):
        t, t_next = ts[k], ts[k + 1]
        h = 1.0 / cfg.num_steps if cfg.schedule == "uniform" else t_next - t  # the release's dt = 1/n
        v = velocity(z, t)
        if cfg.solver == "heun":
            v = 0.5 * (v + velocity(z + h * v, t_next))
        elif cfg.solver == "midpoint":
            v = velocity(z + 0.5 * h * v, t + 0.5 * h)
        z = z + torch.full_like(z, h) * v  # the release multiplies by a dt tensor, zeros_like(z) + 1/n
        if record:
            trajectory.append(z)
            velocities.append(v)
        if progress is not None:
            progress(k + 1, cfg.num_steps)
    if not record:
        return z, None, None
    return z, torch.stack(trajectory), torch.stack(velocities)


def denoise(
    model_output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    scheduler,
    begin_index: int = 0,
    after_step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
    interrupted: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """The scheduler loop: ``z`` (fp32) from ``scheduler.timesteps[begin_index]`` to the end of its grid
    (timesteps already set). ``model_output(z, timestep)`` is in the scheduler's convention
    (:func:`janusflow.flow.as_scheduler_model`); ``after_step(i, timestep, z)`` may replace the latents
    after each scheduler step (a callback, the inpainting's known region); ``interrupted()`` True skips
    the remaining steps (diffusers' ``pipe.interrupt``)."""
    scheduler.set_begin_index(begin_index)
    timesteps = scheduler.timesteps[begin_index:]
    for i, timestep in enumerate(timesteps):
        if interrupted is not None and interrupted():
            continue
        z = scheduler.step(model_output(z, timestep), timestep, z).prev_sample
        if after_step is not None:
            z = after_step(i, timestep, z)
        if progress is not None:
            progress(i + 1, len(timesteps))
    return z


def initial_noise(num: int, config, generator: torch.Generator | list[torch.Generator] | None = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """z0 ~ N(0, I) of shape (num, C, S, S) from the config's latent size; drawn in fp32 on the
    generator's device (so a seed gives the same noise whatever the model's device and dtype).
    A list of generators draws one latent from each."""
    gen = config.gen_vision
    shape = (gen.latent_channels, gen.latent_size, gen.latent_size)  # (C, H, W)
    if isinstance(generator, (list, tuple)):
        if len(generator) != num:
            raise InputError(f"{len(generator)} generators for {num} images; pass one per image or a single one")
        z = torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generator])
    else:
        gen_device = generator.device if generator is not None else "cpu"
        z = torch.randn((num, *shape), generator=generator, device=gen_device)
    return z.to(device=device, dtype=dtype)
