"""Exponential moving average of the trainable weights.

    ema <- decay * ema + (1 - decay) * theta      after every optimizer step

Only trainable parameters are averaged (frozen ones equal their raw value). The EMA is saved in
every checkpoint beside the raw weights and can be swapped into the model for export.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.params = params
        self.shadow = {name: p.detach().clone().float() for name, p in params.items()}

    @torch.no_grad()
    def update(self) -> None:
        # one multi-tensor kernel for all parameters (a per-parameter loop launches one per tensor)
        torch._foreach_lerp_(list(self.shadow.values()), [self.params[n].detach().float() for n in self.shadow],
                             1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {missing[:5]}")
        for name, value in self.shadow.items():
            value.copy_(state[name])

    @contextmanager
    @torch.no_grad()
    def swapped_in(self):
        """Temporarily put the EMA weights into the model (for export or evaluation)."""
        raw = {name: p.detach().clone() for name, p in self.params.items()}
        for name, p in self.params.items():
            p.copy_(self.shadow[name].to(p.dtype))
        try:
            yield
        finally:
            for name, p in self.params.items():
                p.copy_(raw[name])
