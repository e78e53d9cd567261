"""One guided ODE step at the 1.3B config (random weights, fp32, CPU): achieved FLOP/s as a fraction
of this machine's fp32 matrix-product peak, both measured in the same run.

    python benchmarks/bench_step_flops.py --preset janusflow-1.3b --prompt-len 32 --repeats 3

The step is exactly the sampler's: the prompt's keys/values already cached, one batch of 2 rows
(conditional, unconditional) of [t_emb, N latent tokens] through the generation encoder, the LLM and
the decoder, then the guidance and the Euler update. FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; elementwise work counts zero)
and checked against the analytic count of the LLM's matmuls; its formulas do not cover torch's CPU
flash-attention kernel, so the attention FLOPs are added analytically (both figures are printed). The peak is the best
``torch.mm`` of two 4096 x 4096 fp32 matrices, measured before and after the steps (the best of both
is used, so background load lowers the fraction rather than raising it). Both are reported per
wall-clock second and per CPU second of this process: on a machine shared with other jobs the wall
clock also counts time the cores ran someone else; with one thread the CPU time is exact.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import machine, matmul_peak, parse_args, prompt_rows, random_model, timed
from janusflow.sampler import SamplerConfig, VelocityField, initial_noise, integrate, with_guidance


def analytic_llm_flops(config, rows: int, prompt_len: int) -> tuple[float, float]:
    """(linear layers, attention) FLOPs of the LLM in one cached step: 2 * tokens * weights, and
    QK^T + AV over all L + N keys (2 FLOP a multiply-add; the full product, as FlopCounterMode
    counts attention kernels, though the causal half of the new block is masked)."""
    lang = config.language
    D, F, layers = lang.hidden_size, lang.intermediate_size, lang.num_hidden_layers
    kv = D * lang.num_key_value_heads // lang.num_attention_heads
    per_layer_weights = D * D * 2 + D * kv * 2 + 3 * D * F  # q, o; k, v; gate, up, down
    tokens = rows * (1 + config.num_image_tokens)  # a cached step feeds [t_emb, N tokens]
    keys = prompt_len - 1 + 1 + config.num_image_tokens
    return layers * 2 * tokens * per_layer_weights, layers * 2 * 2 * tokens * keys * D


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="janusflow-1.3b")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_args(parser)
    torch.manual_seed(0)
    model = random_model(args.preset)
    config = model.config
    tokens, mask = prompt_rows(config, args.prompt_len, 1, guided=args.cfg != 1)
    z0 = initial_noise(1, config, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        field = VelocityField(model, tokens, mask, config.num_image_tokens, use_cache=True)  # prompt cached once
    velocity = with_guidance(field, args.cfg)
    one_step = SamplerConfig(num_steps=1, guidance_scale=args.cfg)

    @torch.inference_mode()
    def step():
        return integrate(velocity, z0, one_step)[0]

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    by_op = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}
    rows = tokens.shape[0]
    linear, attention = analytic_llm_flops(config, rows, args.prompt_len)
    # torch's CPU flash-attention kernel is not among FlopCounterMode's formulas: add attention by hand
    counted_attention = sum(n for op, n in by_op.items() if "attention" in op)
    total = flops + (attention if counted_attention == 0 else 0)

    peaks = [matmul_peak()]
    wall, cpu = timed(step, repeats=args.repeats)
    peaks.append(matmul_peak())
    peak_wall, peak_cpu = max(p[0] for p in peaks), max(p[1] for p in peaks)

    print(f"# {args.preset}: {model.num_parameters() / 1e9:.2f}B parameters, fp32, CPU; {machine()}")
    print(f"# one guided Euler step (w={args.cfg}, {rows} rows of 1 + {config.num_image_tokens} tokens, "
          f"prompt of {args.prompt_len} cached)")
    print(f"FLOPs counted (FlopCounterMode): {flops / 1e9:.1f} GFLOP  "
          f"({', '.join(f'{k} {v / 1e9:.1f}' for k, v in sorted(by_op.items(), key=lambda kv: -kv[1]))})")
    print(f"FLOPs analytic, LLM: linear layers {linear / 1e9:.1f} GFLOP, attention {attention / 1e9:.1f} GFLOP "
          f"({'counted above' if counted_attention else 'not seen by FlopCounterMode on CPU: added'})")
    print(f"FLOPs of the step: {total / 1e9:.1f} GFLOP")
    print(f"fp32 matmul peak (torch.mm 4096^2), before / after the steps: "
          f"{' / '.join(f'{p[0] / 1e9:.1f}' for p in peaks)} GFLOP/s per wall second, "
          f"{' / '.join(f'{p[1] / 1e9:.1f}' for p in peaks)} per CPU second")
    for label, times, peak in (("wall clock", wall, peak_wall), ("CPU time", cpu, peak_cpu)):
        best, median = min(times), statistics.median(times)
        print(f"{label:>10}: step best {best:.2f} s, median {median:.2f} s over {len(times)}; achieved "
              f"{total / best / 1e9:.1f} GFLOP/s = {total / best / peak:.1%} of peak (best), "
              f"{total / median / peak:.1%} (median); counted FLOPs only: {flops / best / peak:.1%} (best)")


if __name__ == "__main__":
    main()
