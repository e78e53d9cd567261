"""Sequence packing: samples of every task share rows of ``data.seq_len`` tokens.

The paper packs "multiple sequences ... to form a single sequence of length 4,096" (Sec. 4.1). A row
holds segments, one per sample, each exactly the sequence the sample is unpacked:
  und:  ids with each image as [boi, P image slots, eoi]     positions 0.., CE on the answers
  text: [BOS, tokens, EOS]                                   positions 0.., CE on every token after BOS
  gen:  [prompt[:-1], t_emb, N latent tokens]                positions counted from BOS, as the sampler's
A dropped prompt (its row from ``make_uncond``) keeps only its attended columns, [BOS, t_emb, N
tokens] at positions 0, L-1, L, ..: the same attention as its masked row unpacked, in fewer tokens.
The padding after the last segment is a block of its own. No token attends across segments (the
mask is causal inside a segment, false between: :mod:`.packed_attention`); each segment keeps its
sample's own random draws (crop, dropout, t, x0), from its key as unpacked; the first token of every
segment has no label, so no prediction crosses a boundary.

Which samples fill a step is decided in order, by length only (:class:`Packer`): samples come from
the stage's task mix (its phases included) in slot order, and each goes to the first of the step's
``batch_size`` rows with room (first fit). One that fits nowhere waits for the next step, where it
goes first; once LOOKAHEAD samples wait, the step is full (so at most LOOKAHEAD ever wait). The planner's state (each stream's
position, the slot in the current phase, the waiting samples) is small and saved in checkpoints,
so a resumed run packs the same rows; planning runs in the training process in step order, data
workers build the planned rows (images, crops) as they build unpacked batches.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from ..prompt_rows import generation_mask, make_uncond, position_ids_from_left_padding
from .collate import IGNORE, GenItem
from .samples import placeholder_sample

LOOKAHEAD = 8  # samples that may wait for the next step; when that many wait, the step is full
TASK_CODE = {"und": 0, "text": 1, "gen": 2}  # PackedBatch.segment_task; -1: padding
Item = list  # [task, position in its stream, random key, length in tokens]: JSON-able for checkpoints


@dataclass
class StepPlan:
    step: int
    rows: list[list[Item]]  # the global batch's rows, each a list of items in row order
    skipped: int = 0  # samples that could not be read or measured while planning


@dataclass
class Segment:
    task: str
    ids: torch.Tensor  # (n,) int64; the t and latent slots of a generation segment hold pad ids
    positions: torch.Tensor  # (n,)
    labels: torch.Tensor  # (n,)
    pixels: torch.Tensor | None = None  # (k, 3, S, S) uint8, an understanding sample's images
    gen: GenItem | None = None  # a generation sample's draws and images


@dataclass
class PackedBatch:
    """Rows of ``T = data.seq_len`` tokens, each a sequence of segments (see the module docstring)."""

    input_ids: torch.Tensor  # (R, T)
    position_ids: torch.Tensor  # (R, T), restarting in every segment
    document: torch.Tensor  # (R, T) segment number in its row; the padding is one more block
    segment_task: torch.Tensor  # (R, T) TASK_CODE of the segment, -1 on padding
    labels: torch.Tensor  # (R, T) IGNORE where no loss; label[i] is the token at position i
    pixel_values: torch.Tensor | None = None  # (R, M, 3, S, S) each row's understanding images, in order
    images_seq_mask: torch.Tensor | None = None  # (R, T) boi and image slots of understanding segments
    images_emb_mask: torch.Tensor | None = None  # (R, M, 1 + P)
    # the G generation segments, in row-major order
    time_index: torch.Tensor | None = None  # (G,) flat index row * T + column of each t_emb slot
    token_index: torch.Tensor | None = None  # (G, N) flat indices of each segment's latent tokens
    x0: torch.Tensor | None = None  # (G, C, H, W)
    t: torch.Tensor | None = None  # (G,)
    dropped: torch.Tensor | None = None  # (G,) bool
    latents: torch.Tensor | None = None  # (G, C, H, W) x1, when cached (else encoded from gen_pixels)
    gen_pixels: torch.Tensor | None = None  # (G, 3, P, P) uint8 until to_model_inputs
    und_pixels: torch.Tensor | None = None  # (G, 3, S, S) REPA target input
    und_features: torch.Tensor | None = None  # (G, N, W) cached REPA target
    weight: torch.Tensor | None = None  # (G,) 0 for a placeholder segment; None: all 1
    placeholders: int = 0  # segments that add nothing (FSDP: every process runs every part of a step)

    @property
    def num_gen(self) -> int:
        return 0 if self.time_index is None else int(self.time_index.numel())


class Packer:
    """Plans the rows of each step (first fit in slot order) and keeps the state that makes it exact."""

    def __init__(self, schedule, seq_len: int, read: Callable[[str, int], Any],
                 measure: Callable[[str, Any, int], int], on_skip: Callable[[str, int, Exception], None]):
        self.schedule, self.seq_len = schedule, seq_len
        self.read, self.measure, self.on_skip = read, measure, on_skip
        self.state: dict[str, Any] = {"step": 0, "positions": {k: 0 for k in TASK_CODE}, "phase": 0, "slot": 0,
                                      "key": 0, "waiting": []}
        self._states: dict[int, dict[str, Any]] = {0: copy.deepcopy(self.state)}
        self._recent: dict[tuple[str, int], Any] = {}  # samples read while planning, for the build that follows

    def state_at(self, step: int) -> dict[str, Any]:
        """The planner's state before ``step`` (planned already, or the next to plan)."""
        if step not in self._states:
            raise RuntimeError(f"packing: no planner state for step {step}")
        return copy.deepcopy(self._states[step])

    def load_state(self, state: dict[str, Any], schedule_changed: bool) -> None:
        state = copy.deepcopy(state)
        if schedule_changed:  # continue every stream where it was, the new mix from its first slot
            state["phase"], state["slot"] = -1, 0
        self.state, self._states = state, {state["step"]: copy.deepcopy(state)}

    def plan(self, step: int) -> StepPlan:
        if step != self.state["step"]:
            self.state = self.state_at(step)  # planned before (a step asked for again): the same plan
        s = self.state
        segments = self.schedule.segments
        phase = segments.index(self.schedule.segment(step))
        if s["phase"] != phase:
            s["phase"], s["slot"] = phase, 0
        mixture = segments[phase][2]
        rows: list[list[Item]] = [[] for _ in range(self.schedule.batch_size)]
        free = [self.seq_len] * len(rows)

        def place(item: Item) -> bool:
            for row, room in enumerate(free):
                if item[3] <= room:
                    rows[row].append(item)
                    free[row] -= item[3]
                    return True
            return False

        waiting, s["waiting"] = s["waiting"], []
        s["waiting"] = [item for item in waiting if not place(item)]
        skipped, failed_in_a_row = 0, 0
        self._recent = {}
        while len(s["waiting"]) < LOOKAHEAD:
            if failed_in_a_row >= 1000:
                raise InputError("packing: 1000 samples in a row could not be read or fit no row of "
                                 f"data.seq_len = {self.seq_len}")
            task = mixture.task(s["slot"])
            position, key = s["positions"][task], s["key"]
            s["slot"], s["key"] = s["slot"] + 1, s["key"] + 1
            s["positions"][task] += 1
            try:
                sample = self.read(task, position)
                item = [task, position, key, self.measure(task, sample, key)]
            except Exception as e:  # noqa: BLE001 - counted and reported as unpacked samples are
                skipped, failed_in_a_row = skipped + 1, failed_in_a_row + 1
                self.on_skip(task, position, e)
                continue
            failed_in_a_row = 0
            self._recent[(task, position)] = sample
            if not place(item):
                s["waiting"].append(item)
        s["step"] = step + 1
        self._states[step + 1] = copy.deepcopy(s)
        for old in [k for k in self._states if k < step - 256]:
            del self._states[old]
        return StepPlan(step, rows, skipped)

    def sample(self, task: str, position: int):
        """A planned sample: the one read while planning when this process planned it, else read again."""
        found = self._recent.get((task, position))
        return found if found is not None else self.read(task, position)


# -- segments and rows ---------------------------------------------------------------------------

def ce_segment(task: str, ids: list[int], labels: list[int], pixels: torch.Tensor | None = None) -> Segment:
    ids_t = torch.tensor(ids, dtype=torch.int64)
    labels_t = torch.tensor(labels, dtype=torch.int64)
    labels_t[0] = IGNORE  # nothing predicts a segment's first token across the boundary
    return Segment(task, ids_t, torch.arange(len(ids)), labels_t, pixels=pixels)


def gen_segment(item: GenItem, pad_id: int, num_image_tokens: int) -> Segment:
    """[prompt[:-1], t_emb, N tokens] with the unpacked row's positions; a dropped prompt becomes its
    ``make_uncond`` row, whose masked columns are left out (they change no attention)."""
    ids = torch.tensor(item.ids, dtype=torch.int64)[None]  # (1, L)
    mask = torch.ones_like(ids)
    if item.dropped:
        ids, mask = make_uncond(ids, mask, pad_id)
    full_mask = generation_mask(mask, num_image_tokens)[0]  # (L-1+1+N,)
    positions = position_ids_from_left_padding(full_mask[None])[0]
    keep = full_mask != 0
    seq_ids = torch.cat([ids[0, :-1], torch.full((1 + num_image_tokens,), pad_id, dtype=torch.int64)])
    return Segment("gen", seq_ids[keep], positions[keep], torch.full((int(keep.sum()),), IGNORE), gen=item)


def pack_rows(rows: list[list[Segment]], seq_len: int, pad_id: int, image_id: int, boi_id: int,
              num_image_tokens: int, num_und_image_tokens: int) -> PackedBatch:
    """Segments, row by row, into a :class:`PackedBatch` of ``len(rows)`` rows of ``seq_len``."""
    R, T, N = len(rows), seq_len, num_image_tokens
    input_ids = torch.full((R, T), pad_id, dtype=torch.int64)
    position_ids = torch.zeros((R, T), dtype=torch.int64)
    document = torch.zeros((R, T), dtype=torch.int64)
    segment_task = torch.full((R, T), -1, dtype=torch.int8)
    labels = torch.full((R, T), IGNORE, dtype=torch.int64)
    images: list[list[torch.Tensor]] = []
    gens: list[GenItem] = []
    time_index = []
    for r, segments in enumerate(rows):
        column, row_images = 0, []
        for number, seg in enumerate(segments):
            n = seg.ids.numel()
            if column + n > T:
                raise InputError(f"packing: row {r} holds {column + n} tokens, over data.seq_len = {T}")
            span = slice(column, column + n)
            input_ids[r, span], position_ids[r, span], labels[r, span] = seg.ids, seg.positions, seg.labels
            document[r, span], segment_task[r, span] = number, TASK_CODE[seg.task]
            if seg.pixels is not None and seg.pixels.shape[0]:
                row_images.extend(seg.pixels)
            if seg.gen is not None:
                gens.append(seg.gen)
                time_index.append(r * T + column + n - N - 1)
            column += n
        document[r, column:] = len(segments)  # the padding: a causal block of its own (no empty query row)
        position_ids[r, column:] = torch.arange(T - column)
        images.append(row_images)
    batch = PackedBatch(input_ids, position_ids, document, segment_task, labels)
    M = max(len(im) for im in images) if images else 0
    if M:
        shape = images[next(i for i, im in enumerate(images) if im)][0].shape
        batch.pixel_values = torch.zeros((R, M, *shape), dtype=torch.uint8)
        batch.images_emb_mask = torch.zeros((R, M, 1 + num_und_image_tokens), dtype=torch.bool)
        for r, row_images in enumerate(images):
            for m, image in enumerate(row_images):
                batch.pixel_values[r, m] = image
                batch.images_emb_mask[r, m] = True
        und = segment_task == TASK_CODE["und"]
        batch.images_seq_mask = ((input_ids == image_id) | (input_ids == boi_id)) & und
    if gens:
        batch.time_index = torch.tensor(time_index, dtype=torch.int64)
        batch.token_index = batch.time_index[:, None] + 1 + torch.arange(N)[None]  # (G, N)
        _gen_fields(batch, gens)
    return batch


def _gen_fields(batch: PackedBatch, items: list[GenItem]) -> None:
    def stack(name):
        values = [getattr(item, name) for item in items]
        if all(v is None for v in values):
            return None
        if any(v is None for v in values):  # some cached and some not: the cache is all or nothing
            raise InputError(f"mixed cached and uncached {name} in one batch")
        return torch.stack(values)

    batch.x0 = torch.stack([item.x0 for item in items])
    batch.t = torch.cat([item.t for item in items])
    batch.dropped = torch.tensor([item.dropped for item in items])
    batch.latents, batch.gen_pixels = stack("latent"), stack("gen_pixels")
    batch.und_pixels, batch.und_features = stack("und_pixels"), stack("features")
    weight = torch.tensor([getattr(item, "weight", 1.0) for item in items])
    batch.weight = None if bool((weight == 1).all()) else weight


def packed_counts(batch: PackedBatch) -> dict[str, float]:
    """Targets per task, generation samples, real tokens and the rows' capacity of a packed batch."""
    targets = batch.labels[:, 1:] != IGNORE
    task = batch.segment_task[:, 1:]
    ce_und = float((targets & (task == TASK_CODE["und"])).sum())
    ce_text = float((targets & (task == TASK_CODE["text"])).sum())
    weight = batch.weight
    gen = float(batch.num_gen if weight is None else (weight > 0).sum())
    starts = torch.ones_like(batch.document, dtype=torch.bool)
    starts[:, 1:] = batch.document[:, 1:] != batch.document[:, :-1]
    segments = int((starts & (batch.segment_task >= 0)).sum()) - batch.placeholders
    return {"samples": float(segments), "tokens": float((batch.segment_task >= 0).sum()), "ce_tokens": ce_und + ce_text,
            "ce_und_tokens": ce_und, "ce_text_tokens": ce_text, "gen_samples": gen,
            "row_tokens": float(batch.input_ids.numel())}


# -- a step's micro-batches ----------------------------------------------------------------------

def packed_micro_batches(task, plan: StepPlan, shard) -> list:
    """This process's micro-batches of a planned step: its share of the rows (``shard.split``), each
    a :class:`JanusFlowBatch` whose ``packed`` holds them. Under FSDP (``task.pad_parts``) a micro-batch
    lacking a task that the step holds gets a placeholder row of it, so every process runs the same
    modules."""
    from .collate import JanusFlowBatch

    processor, N = task.processor, task.model.config.num_image_tokens
    in_step = {item[0] for row in plan.rows for item in row}
    batches = []
    for micro, rows in enumerate(shard.split(plan.rows)):
        skipped = plan.skipped if shard.rank == 0 and micro == 0 else 0
        built: list[list[Segment]] = []
        for row in rows:
            segments = []
            for task_name, position, key, length in row:  # (read_count counted these when planning)
                try:
                    segment = _segment(task, task_name, task.packer.sample(task_name, position), key, N)
                    if segment.ids.numel() != length:
                        raise InputError(f"a {task_name} sample measured {length} tokens but built {segment.ids.numel()}")
                    segments.append(segment)
                except Exception as e:  # noqa: BLE001 - one bad sample must not end the run; it is counted
                    skipped += 1
                    task._report_skip(task_name, position, e)
            built.append(segments)
        placeholders = ()
        if task.pad_parts:
            present = {seg.task for segments in built for seg in segments}
            placeholders = tuple(t for t in ("und", "gen", "text") if t in in_step and t not in present)
            if placeholders or not built:
                built.append([_segment(task, t, placeholder_sample(t), -1, N, placeholder=True)
                              for t in placeholders or ("text",)])
        batch = JanusFlowBatch(skipped=skipped)
        if built:
            batch.packed = pack_rows(built, task.config.data.seq_len, processor.pad_id, processor.image_id,
                                     processor.boi_id, N, processor.num_image_tokens)
            batch.packed.placeholders = len(built[-1]) if task.pad_parts and (placeholders or not rows) else 0
        batches.append(batch)
    return batches


def _segment(task, task_name: str, sample, key, num_image_tokens: int, placeholder: bool = False) -> Segment:
    encoded = task._encode(task_name, sample, key, placeholder=placeholder)
    if task_name == "und":
        ids, labels, pixels = encoded
        return ce_segment("und", ids, labels, pixels)
    if task_name == "text":
        return ce_segment("text", *encoded)
    return gen_segment(encoded, task.processor.pad_id, num_image_tokens)
