"""The prompt-cached velocity step with fixed shapes, replayable as a CUDA graph or compiled.

:class:`~janusflow.sampler.VelocityField` (the eager reference) builds a fresh ``DynamicCache`` from
the prompt's keys and values at every step; the LLM then appends the step's own keys and values to
it. Here every input of a step lives in a buffer allocated once per shape (R rows, a prompt prefix
of P = L - 1 positions, Q = 1 + N step tokens, the latent's shape), so the step's kernels read and
write the same addresses every time and can be recorded once and replayed:

    keys, values   (R, H_kv, P + Q, d) per layer: [:P] the prompt's (copied in by ``bind``),
                   [P:] overwritten by each step's [t_emb, N latent tokens] (never appended)
    mask           (R, 1, Q, P + Q)  query i attends key j  iff  key_mask[j] and j <= P + i
    positions      (R, Q)            the field's positions of the step tokens
    z (R, C, H, W), t (R,)           copied in at each call

The step itself is ``model.forward_generation`` with a cache whose layers return these buffers
(:class:`FixedPrefixLayer`) and the 4-D mask above (passed as is: transformers uses a 4-D mask
unchanged). Modes:
    "eager"        the fixed-buffer step run as is (the reference for the static-cache logic)
    "cuda_graph"   recorded once per shape with ``torch.cuda.CUDAGraph``, then replayed (CUDA only)
    "compile"      ``torch.compile`` of the step (graphs keyed by shape; ``dynamic=False``)
    "compile+cuda_graph"   the compiled step, recorded as a CUDA graph
A graph is keyed by shape, not by prompt, so the prompts of later calls of the same shape reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .errors import InputError
from .flow import TIME_SCALE
from .sampler import SampleResult, SamplerConfig, VelocityField, integrate, time_grid, with_guidance

MODES = ("eager", "cuda_graph", "compile", "compile+cuda_graph")


class FixedPrefixLayer(DynamicLayer):
    """One layer's keys/values: a fixed prompt prefix of ``prefix_len`` positions, then a slot the
    step's keys/values overwrite in place (a step never grows the cache)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, prefix_len: int):  # (R, H_kv, P + Q, d)
        super().__init__()
        self.keys, self.values, self.prefix_len = keys, values, prefix_len
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        P = self.prefix_len
        self.keys[:, :, P:].copy_(key_states)  # (R, H_kv, Q, d)
        self.values[:, :, P:].copy_(value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.prefix_len


def step_mask(key_mask: torch.Tensor, prefix_len: int, dtype: torch.dtype, attn_implementation: str) -> torch.Tensor:
    """(R, P + Q) key mask -> the step's 4-D mask (R, 1, Q, P + Q): query i (at column P + i) attends
    key j iff ``key_mask[j]`` and j <= P + i. Boolean for SDPA (True = attend); additive (0 or the
    dtype's minimum) for the eager attention."""
    R, S = key_mask.shape
    Q = S - prefix_len
    query_columns = torch.arange(Q, device=key_mask.device) + prefix_len  # (Q,)
    causal = torch.arange(S, device=key_mask.device)[None, :] <= query_columns[:, None]  # (Q, S)
    allowed = (causal[None] & (key_mask != 0)[:, None, :])[:, None]  # (R, 1, Q, S)
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    raise InputError(f"the fixed-shape step supports the LLM's 'sdpa' and 'eager' attention, "
                     f"not {attn_implementation!r}")


def _step(model, z: torch.Tensor, t: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
          mask: torch.Tensor, positions: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """The cached step on the fixed buffers: velocity (R, C, H, W) in the model's dtype."""
    cache = Cache(layers=[FixedPrefixLayer(k, v, prefix_len) for k, v in zip(keys, values)])
    out = model.forward_generation(None, z, t, attention_mask=mask, position_ids=positions, cache=cache)
    return out.velocity


@dataclass
class _Buffers:
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    positions: torch.Tensor
    z: torch.Tensor | None
    t: torch.Tensor | None
    prefix_len: int
    out: torch.Tensor | None = None
    graph: object | None = None
    stats: dict[str, float] = field(default_factory=dict)


class StaticStep:
    """A fixed-shape, replayable version of the cached velocity field of one model (see the module
    docstring). ``bind(field)`` returns v(z, t) with :class:`VelocityField`'s contract."""

    def __init__(self, model, mode: str = "cuda_graph", compile_mode: str | None = "max-autotune-no-cudagraphs",
                 warmup: int = 2):
        if mode not in MODES:
            raise InputError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if "cuda_graph" in mode and model.device.type != "cuda":
            raise InputError(f"mode {mode!r} needs the model on a CUDA device, it is on {model.device}")
        self.model, self.mode, self.warmup = model, mode, warmup
        self.attn_implementation = model.language_model.config._attn_implementation
        self.step_fn = _step
        if mode.startswith("compile"):
            self.step_fn = torch.compile(_step, mode=compile_mode, dynamic=False)
        self._buffers: dict[tuple, _Buffers] = {}
        self.records: list[tuple[tuple, dict[str, float]]] = []  # (shape key, {"setup_s": ...}) per new shape

    def clear(self) -> None:
        """Drop every buffer and graph (their memory returns to the caching allocator)."""
        self._buffers.clear()

    def bind(self, field: VelocityField) -> Callable[[torch.Tensor, float], torch.Tensor]:
        if field.prompt_kv is None:
            raise InputError("the fixed-shape step needs the prompt cache (a VelocityField built with use_cache=True)")
        P = field.prefix_len
        R, S = field.mask.shape
        k0 = field.prompt_kv[0][0]
        key = (R, P, S - P, k0.dtype, k0.device)
        bufs = self._buffers.get(key)
        if bufs is None:
            bufs = self._buffers[key] = self._allocate(field, P)
        for (k, v), kb, vb in zip(field.prompt_kv, bufs.keys, bufs.values):
            kb[:, :, :P].copy_(k)
            vb[:, :, :P].copy_(v)
        bufs.mask.copy_(step_mask(field.mask, P, self.model.dtype, self.attn_implementation))
        bufs.positions.copy_(field.positions[:, P:])
        return lambda z, t: self._call(bufs, key, z, t)

    def _allocate(self, field: VelocityField, P: int) -> _Buffers:
        R, S = field.mask.shape
        keys = [torch.zeros(*k.shape[:2], S, k.shape[-1], dtype=k.dtype, device=k.device) for k, _ in field.prompt_kv]
        values = [torch.zeros(*v.shape[:2], S, v.shape[-1], dtype=v.dtype, device=v.device) for _, v in field.prompt_kv]
        mask = step_mask(field.mask, P, self.model.dtype, self.attn_implementation)
        return _Buffers(keys, values, torch.empty_like(mask), field.positions[:, P:].clone(), z=None, t=None,
                        prefix_len=P)

    def _run(self, bufs: _Buffers) -> torch.Tensor:
        return self.step_fn(self.model, bufs.z, bufs.t, bufs.keys, bufs.values, bufs.mask, bufs.positions,
                            bufs.prefix_len)

    def _call(self, bufs: _Buffers, key: tuple, z: torch.Tensor, t: float) -> torch.Tensor:
        if bufs.z is None or bufs.z.shape != z.shape:
            if bufs.z is not None:
                raise InputError(f"latents of shape {tuple(z.shape)} after {tuple(bufs.z.shape)} in one binding")
            bufs.z = torch.empty(z.shape, dtype=self.model.dtype, device=z.device)
            bufs.t = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
        bufs.z.copy_(z)
        bufs.t.fill_(t * TIME_SCALE)
        if "cuda_graph" not in self.mode:
            return self._run(bufs).float().clone()
        if bufs.graph is None:
            self._capture(bufs, key)
        bufs.graph.replay()
        return bufs.out.float().clone()  # the graph overwrites ``out`` at its next replay

    def _capture(self, bufs: _Buffers, key: tuple) -> None:
        import time

        torch.cuda.synchronize()
        start = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream (cuBLAS workspaces, compilation)
            for _ in range(self.warmup):
                self._run(bufs)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            bufs.out = self._run(bufs)
        torch.cuda.synchronize()
        bufs.graph = graph
        bufs.stats["setup_s"] = time.perf_counter() - start
        self.records.append((key[:3], dict(bufs.stats)))


@torch.inference_mode()
def sample_latents_static(model, tokens: torch.Tensor, attention_mask: torch.Tensor, z0: torch.Tensor,
                          cfg: SamplerConfig, step: StaticStep, record: bool = False,
                          progress: Callable[[int, int], None] | None = None) -> SampleResult:
    """:func:`janusflow.sampler.sample_latents` with the step run by ``step`` (the prompt cache is
    always used: ``cfg.use_prompt_cache`` is ignored). Same inputs, same result up to rounding."""
    cfg.validate()
    B = z0.shape[0]
    if z0.ndim != 4 or z0.shape[1] != model.config.gen_vision.latent_channels:
        raise InputError(f"initial latents must be (B, {model.config.gen_vision.latent_channels}, H, W), "
                         f"got {tuple(z0.shape)}")
    if tokens.shape != attention_mask.shape or tokens.shape[0] != (2 * B if cfg.guided else B):
        raise InputError(f"{B} latents need {2 * B if cfg.guided else B} prompt rows of the mask's shape, got "
                         f"tokens {tuple(tokens.shape)} and mask {tuple(attention_mask.shape)}")
    gen = model.config.gen_vision
    N = gen.grid_for(z0.shape[-1]) * gen.grid_for(z0.shape[-2])
    field = VelocityField(model, tokens, attention_mask, N, use_cache=True)
    velocity = with_guidance(step.bind(field), cfg.guidance_scale)
    z, trajectory, velocities = integrate(velocity, z0.float(), cfg, record, progress)
    result = SampleResult(latents=z, attention_mask=field.mask)
    if record:
        result.trajectory, result.velocities = trajectory, velocities
        result.t_steps = torch.tensor([t * TIME_SCALE for t in time_grid(cfg)[:-1]], dtype=torch.float32)
    return result


__all__ = ["MODES", "FixedPrefixLayer", "StaticStep", "sample_latents_static", "step_mask"]
