"""Prompt-cached sampler vs the full-recompute reference: same weights, same process, same inputs.

    python benchmarks/bench_sampler.py --preset small --steps 10 --prompt-len 16 64 256
    python benchmarks/bench_sampler.py --preset janusflow-1.3b --steps 2 --prompt-len 32 256 --repeats 1

Each configuration runs the whole guided Euler loop (w = 2, one image: 2 rows) both ways, alternating
the order, and reports seconds per step, the ratio reference / cached, and the largest latent
difference (the paths agree to float rounding). A step of the reference feeds (L-1) + 1 + N tokens
per row, a cached step 1 + N, so the ideal ratio is about (L + N) / (1 + N).
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import machine, prompt_rows, random_model
from janusflow.sampler import SamplerConfig, initial_noise, sample_latents


def bench(model, prompt_len: int, steps: int, repeats: int, guidance: float) -> dict:
    config = model.config
    tokens, mask = prompt_rows(config, prompt_len, 1, guided=guidance != 1)
    z0 = initial_noise(1, config, torch.Generator().manual_seed(0))
    wall: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    latents = {}
    for r in range(repeats):
        for cached in ((True, False) if r % 2 == 0 else (False, True)):  # alternate who goes first
            cfg = SamplerConfig(num_steps=steps, guidance_scale=guidance, use_prompt_cache=cached)
            w, c = time.perf_counter(), time.process_time()
            latents[cached] = sample_latents(model, tokens, mask, z0, cfg).latents
            wall[cached].append((time.perf_counter() - w) / steps)
            cpu[cached].append((time.process_time() - c) / steps)
    N = config.num_image_tokens
    return {"prompt_len": prompt_len, "image_tokens": N,
            "cached_wall": min(wall[True]), "full_wall": min(wall[False]),
            "cached_cpu": min(cpu[True]), "full_cpu": min(cpu[False]),
            "ideal_ratio": (prompt_len + N) / (1 + N),
            "max_abs_diff": (latents[True] - latents[False]).abs().max().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--prompt-len", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = random_model(args.preset)
    config = model.config
    tokens, mask = prompt_rows(config, args.prompt_len[0], 1, guided=True)
    sample_latents(model, tokens, mask, initial_noise(1, config), SamplerConfig(num_steps=1))  # warm-up
    print(f"# {args.preset}: {model.num_parameters() / 1e6:.0f}M parameters, fp32, CPU; {machine()}")
    print(f"# guided Euler (w={args.cfg}), 1 image (2 rows), {args.steps} steps, best of {args.repeats}; "
          "seconds per step by wall clock and by this process's CPU time")
    print("| prompt L | image N | cached s/step (wall, CPU) | full s/step (wall, CPU) | full/cached wall | "
          "full/cached CPU | ideal (L+N)/(1+N) | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for L in args.prompt_len:
        r = bench(model, L, args.steps, args.repeats, args.cfg)
        print(f"| {L} | {r['image_tokens']} | {r['cached_wall']:.3f}, {r['cached_cpu']:.3f} | "
              f"{r['full_wall']:.3f}, {r['full_cpu']:.3f} | {r['full_wall'] / r['cached_wall']:.2f}x | "
              f"{r['full_cpu'] / r['cached_cpu']:.2f}x | {r['ideal_ratio']:.2f}x | {r['max_abs_diff']:.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
