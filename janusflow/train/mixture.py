"""Which task fills each slot of a step: the stage's und : gen : text ratio, and its ratio phases.

A stage may open with phases of another mix (the paper's stage 2 opens with 10,000 steps of
30 : 50 : 20 before its 14 : 80 : 6): ``phases = [(until_step, ratio), ...]`` in step order, each
used for the steps before its ``until_step`` (0-based optimizer steps), then the stage's ratio.
Each phase numbers its slots from its first step, so every phase keeps its own ratio exactly from
that step on, and the task of every slot stays a pure function of the step (what exact resume and
the data workers rely on).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from ..errors import InputError
from .samples import TASKS


def integer_weights(ratio: dict[str, float]) -> dict[str, int]:
    """A ratio as the smallest integer weights with the same proportions when any share is
    fractional ({und: 0.3, gen: 0.5, text: 0.2} -> 3 : 5 : 2); integer ratios are kept as given."""
    values = {k: ratio.get(k, 0) for k in TASKS}
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or not math.isfinite(v)
           for v in values.values()) or not any(values.values()):
        raise InputError(f"a task ratio must be non-negative numbers, not all zero: {ratio}")
    if all(float(v).is_integer() for v in values.values()):
        return {k: int(v) for k, v in values.items()}
    shares = {k: Fraction(v).limit_denominator(10_000) for k, v in values.items()}
    scale = math.lcm(*(s.denominator for s in shares.values()))
    weights = {k: int(s * scale) for k, s in shares.items()}
    common = math.gcd(*weights.values())
    return {k: w // common for k, w in weights.items()}


class Mixture:
    """Which task fills each slot of the global batch, in the ratio asked (e.g. und:gen:text 14:80:6).

    Slots are numbered globally (slot g = step * batch_size + j). The task sequence repeats with
    period W = sum of the integer weights and is interleaved by smooth weighted round robin, so every
    W consecutive slots hold exactly w_k slots of task k. The position of slot g in task k's stream
    is the number of earlier slots of task k: a pure function of g, hence of the step.
    """

    def __init__(self, ratio: dict[str, float], batch_size: int):
        weights = integer_weights(ratio)
        self.weights, self.batch_size = weights, batch_size
        total = sum(weights.values())
        current = {k: 0 for k in TASKS}
        self.period: list[str] = []
        for _ in range(total):
            for k in TASKS:
                current[k] += weights[k]
            pick = max(TASKS, key=lambda k: (current[k], -TASKS.index(k)))
            current[pick] -= total
            self.period.append(pick)
        self._before = {k: [0] for k in TASKS}  # count of task k in period[:i]
        for task in self.period:
            for k in TASKS:
                self._before[k].append(self._before[k][-1] + (task == k))

    def task(self, slot: int) -> str:
        return self.period[slot % len(self.period)]

    def position(self, task: str, slot: int) -> int:
        cycles, offset = divmod(slot, len(self.period))
        return cycles * self.weights[task] + self._before[task][offset]

    def step_slots(self, step: int) -> list[tuple[str, int, int]]:
        """[(task, position in that task's stream, global slot)] for the global batch of ``step``."""
        first = step * self.batch_size
        return [(self.task(slot), self.position(self.task(slot), slot), slot)
                for slot in range(first, first + self.batch_size)]

    def positions(self, step: int) -> dict[str, int]:
        """Samples of each task consumed before ``step`` (the data position saved in checkpoints)."""
        slot = step * self.batch_size
        return {k: self.position(k, slot) for k in TASKS}


class MixSchedule:
    """The mix of every step of a stage: its ratio phases, then its own ratio.

    ``positions`` and ``step_slots`` count from ``base_step`` (the step a run last re-based its data
    streams at, 0 unless the mix changed on resume): a phase that began before it starts there.
    """

    def __init__(self, ratio: dict[str, float], batch_size: int,
                 phases: Sequence[tuple[int, dict[str, float]]] = ()):
        self.batch_size = batch_size
        self.segments: list[tuple[int, int | None, Mixture]] = []  # [start, stop) steps, stop None: open
        start = 0
        for until, phase_ratio in phases:
            if until <= start:
                raise InputError(f"ratio phases must end at increasing steps > 0, got until_step {until} "
                                 f"after {start}")
            self.segments.append((start, until, Mixture(phase_ratio, batch_size)))
            start = until
        self.segments.append((start, None, Mixture(ratio, batch_size)))

    @property
    def final(self) -> Mixture:
        """The stage's own mix, after its phases."""
        return self.segments[-1][2]

    def uses(self, task: str) -> bool:
        return any(mixture.weights[task] > 0 for _, _, mixture in self.segments)

    def phases(self) -> list[list]:
        """[[until_step, weights], ...]: what checkpoints record to notice a changed schedule."""
        return [[stop, dict(mixture.weights)] for _, stop, mixture in self.segments[:-1]]

    def segment(self, step: int) -> tuple[int, int | None, Mixture]:
        return next(s for s in self.segments if s[1] is None or step < s[1])

    def positions(self, step: int, base_step: int = 0) -> dict[str, int]:
        """Slots of each task in the steps [base_step, step)."""
        counts = {k: 0 for k in TASKS}
        for start, stop, mixture in self.segments:
            first, last = max(start, base_step), step if stop is None else min(stop, step)
            if last > first:
                for k, n in mixture.positions(last - first).items():
                    counts[k] += n
        return counts

    def step_slots(self, step: int, base_step: int = 0) -> list[tuple[str, int, int]]:
        """[(task, position counted from base_step, slot counted from base_step)] of ``step``."""
        start, _, mixture = self.segment(step)
        first = max(start, base_step)
        before = self.positions(first, base_step)
        offset = (first - base_step) * self.batch_size  # slots of the steps [base_step, first)
        return [(task, before[task] + position, offset + slot)
                for task, position, slot in mixture.step_slots(step - first)]
