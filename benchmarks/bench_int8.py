"""One guided ODE step in int8 against fp32 on this CPU, in the same process, and the velocity's error.

    python benchmarks/bench_int8.py --preset janusflow-1.3b --repeats 3 --threads 1
    python benchmarks/bench_int8.py --model janusflow/default_model --repeats 5 --threads 1

Three models share every weight but the LLM blocks' linear layers (no second copy of the rest):
  fp32            the model as loaded
  int8 (torchao)  ``janusflow.quantize.quantize_model(model, "int8")``: torchao's
                  Int8DynamicActivationInt8WeightConfig (per-channel int8 weights, per-token int8
                  activations at run time), what ``quantize="int8"`` / ``--quantize int8`` use
  int8 (torch.ao) ``torch.ao.quantization.quantize_dynamic`` on the same layers (fbgemm's dynamic
                  int8 linear, per-tensor activations; torch.ao.quantization is deprecated), for comparison
The step is the sampler's (prompt cached once, one batch of cond + uncond rows of [t_emb, N latent
tokens], guidance, the Euler update), best of ``--repeats`` after a warm-up, the models taking turns
to go first. Error: ||v_int8 - v_fp32|| / ||v_fp32|| of the guided velocity at the same (z, t), for
several t (z is the initial noise).
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch
import torch.nn as nn

from _common import machine, parse_args, prompt_rows, random_model, timed
from janusflow.quantize import quantize_model
from janusflow.sampler import SamplerConfig, VelocityField, initial_noise, integrate, with_guidance


def sharing_copy(model: nn.Module) -> nn.Module:
    """A second model object whose parameters and buffers are the first's (quantizing it replaces the
    copy's weights, not the shared ones)."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def torch_ao_dynamic(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(model.llm.layers, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return model


def load(args) -> nn.Module:
    if args.model:
        from janusflow.modeling import JanusFlowModel

        return JanusFlowModel.from_pretrained(args.model).eval()
    return random_model(args.preset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="janusflow-1.3b")
    parser.add_argument("--model", default=None, help="a model folder instead of a random preset")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--times", type=float, nargs="+", default=[0.0, 0.5, 0.9], help="t of the error check")
    args = parse_args(parser)
    torch.manual_seed(0)
    fp32 = load(args)
    models = {"fp32": fp32, "int8 (torchao)": quantize_model(sharing_copy(fp32), "int8"),
              "int8 (torch.ao)": torch_ao_dynamic(sharing_copy(fp32))}
    config = fp32.config
    N = config.num_image_tokens
    tokens, mask = prompt_rows(config, args.prompt_len, 1, guided=args.cfg != 1)
    z0 = initial_noise(1, config, torch.Generator().manual_seed(0))
    one_step = SamplerConfig(num_steps=1, guidance_scale=args.cfg)
    with torch.inference_mode():
        velocity = {name: with_guidance(VelocityField(m, tokens, mask, N, use_cache=True), args.cfg)
                    for name, m in models.items()}  # the prompt prefilled once per model
        errors = {name: [] for name in models}
        for t in args.times:
            ref = velocity["fp32"](z0, t)
            for name in models:
                errors[name].append(float((velocity[name](z0, t) - ref).norm() / ref.norm()))

    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for r in range(args.repeats):
        for name in order[r % len(order):] + order[: r % len(order)]:  # each goes first in turn

            @torch.inference_mode()
            def step(name=name):
                integrate(velocity[name], z0, one_step)

            w, c = timed(step, repeats=1, warmup=1 if r == 0 else 0)
            wall[name] += w
            cpu[name] += c
    what = args.model or f"preset {args.preset} (random weights)"
    print(f"# {what}: {fp32.num_parameters() / 1e6:.0f}M parameters; {machine()}")
    print(f"# one guided Euler step (w={args.cfg}, {tokens.shape[0]} rows of 1 + {N} tokens, prompt of "
          f"{args.prompt_len} cached), best of {args.repeats}; velocity error at t = {args.times}")
    print("| model | step CPU s (best) | step wall s (best) | speed-up vs fp32 (CPU) | velocity rel. error |")
    print("|---|---|---|---|---|")
    base = min(cpu["fp32"])
    for name in models:
        err = ", ".join(f"{e:.2e}" for e in errors[name]) if name != "fp32" else "-"
        print(f"| {name} | {min(cpu[name]):.3f} | {min(wall[name]):.3f} | {base / min(cpu[name]):.2f}x | {err} |",
              flush=True)


if __name__ == "__main__":
    main()
