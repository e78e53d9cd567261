"""Training throughput of a small config on this CPU, as a fraction of the fp32 matmul peak measured in
the same run.

    python benchmarks/bench_train.py --preset small --batch-size 16 --steps 8 [--threads 1]

The run is the real trainer end to end (``janusflow.train``: data read from jsonl and PNG files,
VAE encoding, the three losses, backward, clipping, AdamW, EMA), the SFT stage (everything
trains) with und : gen : text = 21 : 70 : 9, on the toy data. A step's time runs from the trainer
asking for its batches to its asking for the next ones; the ``--steps`` steps after ``--warmup``
are timed (the final checkpoint and export are outside them).
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on a forward and backward of
the same global batches as the timed steps, after the run (matmuls, convolutions, attention; the
VAE encoder, elementwise work and the optimizer count zero, so the fraction is a lower bound on the
hardware's use). The peak is
the best ``torch.mm`` of two 4096 x 4096 fp32 matrices, measured before and after the run.
Both are given per wall-clock second and per CPU second of this process: on a shared machine the
wall-clock fraction drops when other processes hold the cores, the CPU-time one much less (with
one thread it is exact).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import machine, parse_args
from janusflow.train import Shard, Trainer
from janusflow.train.config import load_config
from janusflow.train.task import JanusFlowTask
from janusflow.train.toydata import write_toy_data


def matmul_peak(size: int = 4096, repeats: int = 5) -> tuple[float, float]:
    """Best fp32 FLOP/s of ``torch.mm`` (size x size)^2: (per wall-clock second, per CPU second)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return 2 * size**3 / min(wall), 2 * size**3 / min(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repa-layer", type=int, default=2)
    args = parse_args(parser)

    peaks = [matmul_peak()]
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_toy_data(Path(tmp) / "data", count=64, vocab_size=1024)
        config = load_config(None, [
            f"run_dir={tmp}/run", f"model.preset={args.preset}", f"model.tokenizer={paths['tokenizer']}",
            "vae.tiny_random=true", "stage=sft", f"stage.batch_size={args.batch_size}",
            f"stage.steps={args.warmup + args.steps + 1}", f"data.und=[{paths['und']}]",
            f"data.gen=[{paths['gen']}]", f"data.text=[{paths['text']}]", f"losses.repa_layer={args.repa_layer}",
            "trainer.progress=false", "trainer.save_every=100000", "trainer.ema_decay=0.99"])
        task = JanusFlowTask(config)

        marks: list[tuple[float, float]] = []  # (wall, cpu) when each step asks for its batches
        draw = task.micro_batches

        def timed_draw(step, shard):
            marks.append((time.perf_counter(), time.process_time()))
            return draw(step, shard)

        task.micro_batches = timed_draw
        Trainer(task, config.trainer_config()).fit()
        peaks.append(matmul_peak())
        # FLOPs and tokens of exactly the timed steps (each step's batch is a function of the step)
        timed_steps = range(args.warmup, args.warmup + args.steps)
        flops = tokens = 0.0
        for step in timed_steps:
            batch = draw(step, Shard(0, 1, 1))[0]
            counts = task.counts(batch)
            tokens += counts["tokens"]
            with FlopCounterMode(display=False) as counter:
                task.module(batch, counts)[0].backward()
            task.module.zero_grad(set_to_none=True)
            flops += counter.get_total_flops()
    peak_wall, peak_cpu = max(p[0] for p in peaks), max(p[1] for p in peaks)
    first, last = marks[args.warmup], marks[args.warmup + args.steps]
    wall, cpu = (last[0] - first[0]) / args.steps, (last[1] - first[1]) / args.steps
    flops_per_step, tokens_per_step = flops / args.steps, tokens / args.steps
    params = sum(p.numel() for p in task.model.parameters())
    print(f"machine: {machine()}")
    print(f"model: preset {args.preset}, {params / 1e6:.1f}M parameters; SFT stage, batch {args.batch_size} "
          f"(und:gen:text 21:70:9, {tokens_per_step:.0f} tokens), fp32")
    print(f"step: {wall * 1e3:.0f} ms wall, {cpu * 1e3:.0f} ms CPU (mean of {args.steps}); "
          f"{args.batch_size / wall:.1f} samples/s, {tokens_per_step / wall:.0f} tokens/s")
    print(f"FLOPs per step (forward + backward, counted, mean): {flops_per_step / 1e9:.2f} GFLOP")
    print(f"per wall second: {flops_per_step / wall / 1e9:.1f} GFLOP/s of a {peak_wall / 1e9:.1f} GFLOP/s "
          f"fp32 matmul peak = {flops_per_step / wall / peak_wall:.1%}")
    print(f"per CPU second:  {flops_per_step / cpu / 1e9:.1f} GFLOP/s of a {peak_cpu / 1e9:.1f} GFLOP/s "
          f"fp32 matmul peak = {flops_per_step / cpu / peak_cpu:.1%}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
