"""The ODE sampler: solvers, time schedule, classifier-free guidance and the prompt KV cache.

The model is a velocity function (``JanusFlowModel.forward_generation``); this module owns the
loop. Rows: conditional rows first, then (when guidance is on) the matching unconditional rows
built by :func:`janusflow.processor.make_uncond`; both halves see the same latent.

Prompt cache: the prompt prefix (its first L-1 embeddings) never attends to later positions, so
its keys and values are computed once per call and reused at every step; a step feeds only
``[t_emb, N latent tokens]`` at positions L-1 .. L+N-2. The full-recompute path (the released
behaviour, every step runs the whole sequence) is kept as the reference; tests check both agree.

Position ids are ``0 .. S-1`` counted from each row's first real token (its BOS): a row of a
left-padded batch gets the same positions as when alone. The zeros the unconditional mask puts
inside the prompt do not shift positions (as in the release).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .flow import TIME_SCALE, guided_velocity

SOLVERS = ("euler", "heun", "midpoint")
SCHEDULES = ("uniform", "shifted")


@dataclass
class SamplerConfig:
    num_steps: int = 30
    guidance_scale: float = 2.0
    solver: str = "euler"  # "euler" (as released), "heun" or "midpoint" (2 evaluations a step)
    schedule: str = "uniform"  # "uniform" (as released) or "shifted" (more steps near the noise end)
    shift: float = 3.0  # for "shifted": sigma' = s*sigma / (1 + (s-1)*sigma), sigma = 1 - t
    use_prompt_cache: bool = True

    def validate(self) -> None:
        from .errors import InputError

        if not isinstance(self.num_steps, int) or self.num_steps <= 0:
            raise InputError(f"num_steps must be a positive integer, got {self.num_steps!r}")
        if not (self.guidance_scale >= 0) or self.guidance_scale != self.guidance_scale:
            raise InputError(f"guidance_scale must be >= 0, got {self.guidance_scale!r}")
        if self.solver not in SOLVERS:
            raise InputError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.shift > 0:
            raise InputError(f"shift must be positive, got {self.shift!r}")

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0


def time_grid(cfg: SamplerConfig) -> list[float]:
    """t_0 = 0 (noise) < t_1 < ... < t_n = 1 (data), as python floats (the release: k / n)."""
    n = cfg.num_steps
    ts = [k / n for k in range(n + 1)]
    if cfg.schedule == "shifted":
        s = cfg.shift
        ts = [1 - (s * (1 - t)) / (1 + (s - 1) * (1 - t)) for t in ts]
    return ts


@dataclass
class SampleResult:
    latents: torch.Tensor  # (B, C, H, W), t = 1
    attention_mask: torch.Tensor  # (R, L-1+1+N) the full-sequence key mask used
    t_steps: torch.Tensor | None = None  # (n_evals,) on the 0..1000 scale, when recorded
    trajectory: torch.Tensor | None = None  # (n+1, B, C, H, W)
    velocities: torch.Tensor | None = None  # (n, B, C, H, W) guided velocity used at each step


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """0-based positions from each row's first attended token (left padding skipped)."""
    lead = (mask.cumsum(dim=1) == 0).sum(dim=1, keepdim=True)  # (R, 1) number of leading pads
    return (torch.arange(mask.shape[1], device=mask.device)[None] - lead).clamp(min=0)


class VelocityField:
    """v(z, t) for a fixed batch of prompt rows, with or without the prompt cache."""

    def __init__(self, model, tokens: torch.Tensor, prompt_mask: torch.Tensor, num_image_tokens: int,
                 use_cache: bool):
        self.model = model
        R, L = tokens.shape
        self.rows = R
        self.prefix = model.embed_prompt(tokens)  # (R, L-1, D)
        ones = torch.ones(R, 1 + num_image_tokens, dtype=prompt_mask.dtype, device=prompt_mask.device)
        self.mask = torch.cat([prompt_mask[:, : L - 1], ones], dim=1)  # (R, L-1+1+N); the t slot attends
        self.positions = _positions(self.mask)
        self.prefix_len = L - 1
        self.cache_layers = None
        if use_cache:
            from transformers import DynamicCache

            cache = DynamicCache(config=model.language_model.config)
            model.llm(inputs_embeds=self.prefix, attention_mask=self.mask[:, : L - 1],
                      position_ids=self.positions[:, : L - 1], cache=cache, use_cache=True)
            self.cache_layers = [(layer.keys, layer.values) for layer in cache.layers]

    def _fresh_cache(self):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.language_model.config)
        for i, (k, v) in enumerate(self.cache_layers):
            cache.update(k, v, i)
        return cache

    def __call__(self, z: torch.Tensor, t: float) -> torch.Tensor:
        """Velocity for every row; ``z`` has one latent per row, ``t`` in [0, 1]."""
        t_in = torch.full((z.shape[0],), t * TIME_SCALE, dtype=torch.float32, device=z.device)
        if self.cache_layers is None:
            return self.model.forward_generation(self.prefix, z, t_in, attention_mask=self.mask,
                                                 position_ids=self.positions).velocity
        return self.model.forward_generation(None, z, t_in, attention_mask=self.mask,
                                             position_ids=self.positions[:, self.prefix_len:],
                                             cache=self._fresh_cache()).velocity


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
    """Integrate dz/dt = v(z, t) from t = 0 (noise, ``z0``) to t = 1 (data)."""
    cfg.validate()
    B = z0.shape[0]
    if cfg.guided and tokens.shape[0] != 2 * B:
        raise ValueError(f"guidance needs 2*B = {2 * B} prompt rows (cond then uncond), got {tokens.shape[0]}")
    if not cfg.guided:
        tokens, attention_mask = tokens[:B], attention_mask[:B]  # w = 1: no unconditional pass at all
    N = model.config.gen_vision.grid_for(z0.shape[-1]) ** 2  # latent tokens the encoder makes
    field = VelocityField(model, tokens, attention_mask, N, cfg.use_prompt_cache)

    def velocity(z: torch.Tensor, t: float) -> torch.Tensor:
        if not cfg.guided:
            return field(z, t)
        v_cond, v_uncond = field(torch.cat([z, z]), t).chunk(2)
        return guided_velocity(v_cond, v_uncond, cfg.guidance_scale)

    ts = time_grid(cfg)
    z = z0.to(model.dtype)
    traj, vels, t_eval = [z0], [], []
    for k in range(cfg.num_steps):
        t, t_next = ts[k], ts[k + 1]
        dt = (1.0 / cfg.num_steps) if cfg.schedule == "uniform" else (t_next - t)
        v = velocity(z, t)
        t_eval.append(t)
        if cfg.solver == "heun":
            z_pred = z + dt * v
            v = 0.5 * (v + velocity(z_pred, t_next))
        elif cfg.solver == "midpoint":
            v = velocity(z + 0.5 * dt * v, t + 0.5 * dt)
        z = z + torch.zeros_like(z).add_(dt) * v  # the release's dt tensor: zeros_like(z) + 1/n
        if record:
            traj.append(z)
            vels.append(v)
        if progress is not None:
            progress(k + 1, cfg.num_steps)
    result = SampleResult(latents=z, attention_mask=field.mask)
    if record:
        result.trajectory = torch.stack(traj)
        result.velocities = torch.stack(vels)
        result.t_steps = torch.tensor([t * TIME_SCALE for t in t_eval], dtype=torch.float32)
    return result
