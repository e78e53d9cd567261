"""Training throughput of a small config on this CPU, as a fraction of the fp32 matmul peak measured in
the same run.

    python benchmarks/bench_train.py --preset small --batch-size 16 --steps 8

The run is the real trainer end to end (``janusflow.train``: data read from jsonl and PNG files,
VAE encoding, the three losses, backward, clipping, AdamW, EMA), the SFT stage (everything
trains) with und : gen : text = 21 : 70 : 9, on the toy data. Time per step is the wall time
between the trainer's log rows after ``--warmup`` steps (checkpointing is outside the timed steps).
FLOPs per step are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one forward and
backward of a global batch (matmuls, convolutions, attention; the VAE encoder, elementwise work and
the optimizer count zero, so the fraction is a lower bound on the hardware's use). The peak is
the best ``torch.mm`` of two 4096 x 4096 fp32 matrices, measured before and after the run.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import machine, matmul_peak
from janusflow.train import Shard, Trainer
from janusflow.train.config import load_config
from janusflow.train.task import JanusFlowTask
from janusflow.train.toydata import write_toy_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repa-layer", type=int, default=2)
    args = parser.parse_args()

    peak_before = matmul_peak()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_toy_data(Path(tmp) / "data", count=64, vocab_size=1024)
        config = load_config(None, [
            f"run_dir={tmp}/run", f"model.preset={args.preset}", f"model.tokenizer={paths['tokenizer']}",
            "vae.tiny_random=true", "stage=sft", f"stage.batch_size={args.batch_size}",
            f"stage.steps={args.warmup + args.steps}", f"data.und=[{paths['und']}]", f"data.gen=[{paths['gen']}]",
            f"data.text=[{paths['text']}]", f"losses.repa_layer={args.repa_layer}", "trainer.progress=false",
            "trainer.save_every=100000", "trainer.ema_decay=0.99"])
        task = JanusFlowTask(config)

        batch = task.micro_batches(0, Shard(0, 1, 1))[0]
        counts = task.counts(batch)
        with FlopCounterMode(display=False) as counter:
            loss, _ = task.module(batch, counts)
            loss.backward()
        task.module.zero_grad(set_to_none=True)
        flops_per_step = counter.get_total_flops()

        Trainer(task, config.trainer_config()).fit()
        with open(Path(tmp) / "run" / "log.csv", newline="") as f:
            rows = list(csv.DictReader(f))[args.warmup:]
    peak = max(peak_before, matmul_peak())
    samples_per_s = statistics.median(float(r["samples_per_s"]) for r in rows)
    tokens_per_s = statistics.median(float(r["tokens_per_s"]) for r in rows)
    step_s = args.batch_size / samples_per_s
    achieved = flops_per_step / step_s
    params = sum(p.numel() for p in task.model.parameters())
    print(f"machine: {machine()}")
    print(f"model: preset {args.preset}, {params / 1e6:.1f}M parameters; SFT stage, batch {args.batch_size} "
          f"(und:gen:text 21:70:9), fp32")
    print(f"step: {step_s * 1e3:.0f} ms (median of {len(rows)}), {samples_per_s:.1f} samples/s, "
          f"{tokens_per_s:.0f} tokens/s")
    print(f"FLOPs per step (forward + backward, counted): {flops_per_step / 1e9:.2f} GFLOP")
    print(f"achieved: {achieved / 1e9:.1f} GFLOP/s of a {peak / 1e9:.1f} GFLOP/s fp32 matmul peak "
          f"= {achieved / peak:.1%}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
