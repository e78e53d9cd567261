"""What a data worker costs per training step of the shapes recipe, and what it hands over.

    python benchmarks/bench_train_data.py [--stage unified] [--batch-size 256] [--steps 6] [--threads 1]

A step's micro-batches are built as a data worker builds them (``JanusFlowTask.cpu_micro_batches``:
scenes drawn and rendered, conversations tokenized, noise and times drawn), with the images kept
8-bit; the float layout (``collate.to_model_inputs`` applied on the CPU) is what the trainer would
receive if workers converted the images themselves. Both are measured in the
same process, on the same steps: build time per step (one thread, the worker's setting), samples
per second per worker, and the bytes of tensors handed to the training process and copied to the
device each step.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from _common import ROOT, machine, parse_args
from janusflow.shapes.recipe import unified
from janusflow.shapes.recipe.config import REPO_CONFIGS, load_recipe
from janusflow.train import Shard
from janusflow.train.collate import to_model_inputs
from janusflow.train.task import JanusFlowTask


def tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(tensor_bytes(v) for v in vars(obj).values())
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    recipe = load_recipe(REPO_CONFIGS / "shapes.yaml")  # the GPU recipe's JanusFlow stages
    parser.add_argument("--stage", default="unified", choices=[n for n, s in recipe.stages.items() if s.kind == "janusflow"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    args = parse_args(parser, threads_default=1)

    spec, settings = recipe.stages[args.stage], recipe.stage_training(args.stage)
    model = ROOT / "janusflow" / "default_model"
    config = unified.train_config(spec.phase, spec, settings, model, Path("/nonexistent"), seed=4)
    config.stage.batch_size = args.batch_size
    task = JanusFlowTask(config, sources=unified.shapes_sources(4, settings))
    shard = Shard(0, 1, 1)
    task.cpu_micro_batches(0, shard)  # warm-up (imports, caches)

    built, floats = [], []
    build_s = convert_s = 0.0
    for step in range(1, args.steps + 1):
        start = time.process_time()
        micro = task.cpu_micro_batches(step, shard)
        build_s += time.process_time() - start
        start = time.process_time()
        converted = [to_model_inputs(copy.deepcopy(b)) for b in micro]
        convert_s += time.process_time() - start
        built.append(tensor_bytes(micro))
        floats.append(tensor_bytes(converted))
    per_step = build_s / args.steps
    convert = convert_s / args.steps
    print(f"# {machine()}; stage {args.stage}, batch {args.batch_size}, {args.steps} steps")
    print("| handed over | CPU s / step / worker | samples/s / worker | MB / step |")
    print("|---|---|---|---|")
    print(f"| 8-bit images (as workers hand them over) | {per_step:.3f} | {args.batch_size / per_step:,.0f} | {sum(built) / len(built) / 1e6:.1f} |")
    print(f"| float32 images (converted on the CPU) | {per_step + convert:.3f} | {args.batch_size / (per_step + convert):,.0f} | "
          f"{sum(floats) / len(floats) / 1e6:.1f} |")


if __name__ == "__main__":
    main()
