"""Prompt-cached sampler vs the full-recompute reference: same weights, same process, same inputs.

    python benchmarks/bench_sampler.py --preset small --prompt-len 16 64 256 --repeats 5 --threads 1
    python benchmarks/bench_sampler.py --preset janusflow-1.3b --prompt-len 32 256 --repeats 2 --threads 1

For each prompt length L (one image, guided: 2 rows of L ids), the sampler's own pieces are timed:
the cached path's one-time prompt prefill (``VelocityField(..., use_cache=True)``), then one guided
Euler step of each path (``integrate(with_guidance(field, w), z, 1 step)``), alternating which goes
first, best of ``--repeats``. A cached step feeds 1 + N tokens per row, a reference step L + N, so
the ideal per-step ratio is (L + N) / (1 + N); a whole run of n steps costs n * full against
prefill + n * cached. The two paths' latents after the step are compared (float rounding only).
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import machine, parse_args, prompt_rows, random_model, timed
from janusflow.sampler import SamplerConfig, VelocityField, initial_noise, integrate, with_guidance


def bench(model, prompt_len: int, repeats: int, guidance: float) -> dict:
    config = model.config
    N = config.num_image_tokens
    tokens, mask = prompt_rows(config, prompt_len, 1, guided=guidance != 1)
    z0 = initial_noise(1, config, torch.Generator().manual_seed(0))
    one_step = SamplerConfig(num_steps=1, guidance_scale=guidance)
    with torch.inference_mode():
        w, c = time.perf_counter(), time.process_time()
        cached = VelocityField(model, tokens, mask, N, use_cache=True)  # the prompt prefill
        prefill = (time.perf_counter() - w, time.process_time() - c)
        full = VelocityField(model, tokens, mask, N, use_cache=False)
    steps = {name: with_guidance(field, guidance) for name, field in (("cached", cached), ("full", full))}
    wall: dict[str, list[float]] = {"cached": [], "full": []}
    cpu: dict[str, list[float]] = {"cached": [], "full": []}
    latents = {}
    for r in range(repeats):
        for name in (("cached", "full") if r % 2 == 0 else ("full", "cached")):  # alternate who goes first

            @torch.inference_mode()
            def step(name=name):
                latents[name] = integrate(steps[name], z0, one_step)[0]

            w_times, c_times = timed(step, repeats=1, warmup=1 if r == 0 else 0)
            wall[name] += w_times
            cpu[name] += c_times
    return {"L": prompt_len, "N": N, "prefill": prefill,
            "cached": (min(wall["cached"]), min(cpu["cached"])), "full": (min(wall["full"]), min(cpu["full"])),
            "ideal": (prompt_len + N) / (1 + N),
            "max_abs_diff": (latents["cached"] - latents["full"]).abs().max().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--prompt-len", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run-steps", type=int, default=30, help="n for the whole-run ratio")
    parser.add_argument("--cfg", type=float, default=2.0)
    args = parse_args(parser)
    torch.manual_seed(0)
    model = random_model(args.preset)
    n = args.run_steps
    print(f"# {args.preset}: {model.num_parameters() / 1e6:.0f}M parameters, fp32, CPU; {machine()}")
    print(f"# one image, guided (w={args.cfg}, 2 rows); one Euler step of each path, best of {args.repeats}; "
          "seconds as wall clock / CPU time of this process")
    print(f"| prompt L | image N | prefill (once) | cached step | full step | full/cached per step (CPU) | "
          f"ideal (L+N)/(1+N) | {n}-step run full/cached (CPU) | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for L in args.prompt_len:
        r = bench(model, L, args.repeats, args.cfg)
        (pw, pc), (cw, cc), (fw, fc) = r["prefill"], r["cached"], r["full"]
        print(f"| {L} | {r['N']} | {pw:.3f} / {pc:.3f} | {cw:.3f} / {cc:.3f} | {fw:.3f} / {fc:.3f} | "
              f"{fc / cc:.2f}x | {r['ideal']:.2f}x | {n * fc / (pc + n * cc):.2f}x | {r['max_abs_diff']:.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
