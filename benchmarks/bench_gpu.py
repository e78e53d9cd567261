"""The 1.3B model on one GPU (random weights, bf16): generation against the release's loop,
understanding, and training (FSDP, activation checkpointing, full fine-tuning and LoRA).

    python benchmarks/bench_gpu.py --preset janusflow-1.3b --out bench-gpu      # on a CUDA machine
    python benchmarks/bench_gpu.py --preset tiny --device cpu --out /tmp/b       # CPU smoke test

Sections (``--sections``, each under its own time budget; a failing one is recorded and the others run):
  generation     images/s at each ``--batches`` size, ``--steps`` Euler steps, guidance ``--guidance``:
                 "release"   eager, every step recomputes [prompt, t_emb, N latent tokens] for the cond
                             and uncond rows in one batch (the release's loop; janusflow's reference path)
                 "cached"    eager, the prompt's keys/values computed once (janusflow.sampler)
                 "cuda_graph"  the cached step on fixed buffers replayed as one CUDA graph (janusflow.fast_step)
                 "compile+cuda_graph"  the same step compiled by torch.compile first (``--compile-batches``)
                 Same weights, prompts and noise for all, in this process; the time of a run covers the
                 prompt prefill and every step (the VAE decode, common to all, is not run). One guided
                 velocity of each fast path is checked against the release path's (relative L2 error,
                 bf16 tolerance), and the final latents' relative difference is reported.
  understanding  time to first token (image encoding + prefill + one token) and decode tokens/s at each
                 ``--und-batches`` size: one 384-px image (576 slots) and ``--text-tokens`` text tokens a
                 row, greedy, ``--new-tokens`` new tokens, KV cache (janusflow.understanding.decode).
  training       benchmarks/_gpu_train.py: the project's trainer step on JanusFlowTask batches.

Results: ``OUT/results.json`` and ``OUT/results.md`` (rewritten after every section), and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from _common import PAD, prompt_rows, random_model

PRESET_DEFAULTS = {  # per preset: what fits the budget of a ~10-minute lease, or a CPU smoke test
    "janusflow-1.3b": dict(batches=[1, 5, 16], steps=30, repeats=2, compile_batches=[5], und_batches=[1, 8],
                           new_tokens=64, train_batch=32, train_steps=5),
    "small": dict(batches=[1, 5], steps=4, repeats=1, compile_batches=[], und_batches=[1, 2], new_tokens=8,
                  train_batch=8, train_steps=2),
    "tiny": dict(batches=[1, 5], steps=3, repeats=1, compile_batches=[], und_batches=[1, 2], new_tokens=4,
                 train_batch=6, train_steps=2),
}


class OutOfBudget(Exception):
    pass


class Budget:
    """Stop a section with OutOfBudget after ``seconds``: SIGALRM, checked between Python bytecodes, so a
    section stops at its next Python step and keeps what it has recorded. The alarm repeats every
    second until the section ends, in case library code caught the first exception."""

    def __init__(self, seconds: float):
        self.seconds, self.expired = seconds, False

    def __enter__(self):
        def fire(signum, frame):
            self.expired = True
            raise OutOfBudget(f"over its time budget of {self.seconds:g} s")

        self.previous = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 1e-3), 1.0)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(fn, device, repeats: int) -> tuple[float, list[float]]:
    """(seconds of the first call, seconds of each of ``repeats`` later calls)."""
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times[0], times[1:]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp32."""
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


# -- generation ----------------------------------------------------------------------------------------

def bench_generation(model, args, device, record) -> None:
    """All batch sizes with the release, cached and CUDA-graph paths first; the compiled step (slow to
    build) last, so that running out of budget there loses nothing else."""
    from janusflow.fast_step import StaticStep

    graph = StaticStep(model, "cuda_graph") if device.type == "cuda" else StaticStep(model, "eager")
    failures, release_s = [], {}
    for B in args.batches:
        rows = generation_rows(model, args, device, B, {("cuda_graph" if device.type == "cuda" else "static_eager"): graph},
                               failures, release_s)
        for row in rows:
            record(row)
        graph.clear()
    if args.compile != "none" and device.type == "cuda":
        for B in args.compile_batches:
            step = StaticStep(model, "compile+cuda_graph", compile_mode=None if args.compile == "default" else args.compile)
            for row in generation_rows(model, args, device, B, {"compile+cuda_graph": step}, failures, release_s):
                record(row)
            step.clear()
    if failures:
        raise AssertionError("a fast path failed or disagrees with the release path: " + "; ".join(failures))


def generation_rows(model, args, device, B: int, steps: dict, failures: list, release_s: dict) -> list[dict]:
    """Rows of batch ``B``: the release path (once per B) and the eager cached path, then ``steps``
    (name -> StaticStep), each timed, and each fast path's agreement with the release path."""
    from janusflow.fast_step import sample_latents_static
    from janusflow.sampler import SamplerConfig, VelocityField, initial_noise, sample_latents, with_guidance

    config, w = model.config, args.guidance
    N = config.num_image_tokens
    tolerance = 3e-2 if model.dtype == torch.bfloat16 else 1e-4
    tokens, mask = (x.to(device) for x in prompt_rows(config, args.prompt_len, B, guided=True, seed=B))
    z0 = initial_noise(B, config, torch.Generator().manual_seed(B), device=device)
    cfg = SamplerConfig(args.steps, w)
    runs = {}
    if B not in release_s:
        runs["release"] = lambda: sample_latents(model, tokens, mask, z0, SamplerConfig(args.steps, w, use_prompt_cache=False))
        runs["cached"] = lambda: sample_latents(model, tokens, mask, z0, cfg)
    for name, step in steps.items():
        runs[name] = lambda step=step: sample_latents_static(model, tokens, mask, z0, cfg, step)
    latents, rows = {}, {}
    for name, run in runs.items():
        try:
            first, times = timed_runs(lambda: latents.__setitem__(name, run().latents), device, args.repeats)
        except OutOfBudget:
            raise
        except Exception as e:  # noqa: BLE001 - one path failing (a capture, a compile) keeps the others
            if name == "release":
                raise
            traceback.print_exc()
            failures.append(f"B={B} {name}: {type(e).__name__}: {e}"[:500])
            latents.pop(name, None)
            continue
        best = min(times)
        rows[name] = {"batch": B, "path": name, "first_run_s": first, "run_s": best,
                      "run_s_median": statistics.median(times), "images_per_s": B / best,
                      "step_ms": 1e3 * best / args.steps}
        if name in steps:
            rows[name]["setup_s"] = sum(s.get("setup_s", 0.0) for k, s in steps[name].records if k[0] == 2 * B)
        print(f"  generation B={B} {name:>20}: {best:.3f} s a run ({B / best:.2f} images/s), "
              f"first run {first:.3f} s", flush=True)
    if "release" in latents:
        release_s[B] = (rows["release"]["run_s"], latents["release"])
    base, reference_latents = release_s[B]
    with torch.inference_mode():  # one guided velocity at (z0, t = 0.5) against the release path's
        reference = with_guidance(VelocityField(model, tokens, mask, N, use_cache=False), w)(z0, 0.5)
        for name in rows:
            rows[name]["speedup_vs_release"] = base / rows[name]["run_s"]
            if name != "release" and name not in latents:
                continue
            if name == "release":
                continue
            field = VelocityField(model, tokens, mask, N, use_cache=True)
            velocity = field if name == "cached" else steps[name].bind(field)
            err = relative_error(with_guidance(velocity, w)(z0, 0.5), reference)
            rows[name].update(velocity_rel_err=err, latents_rel_err=relative_error(latents[name], reference_latents),
                              agrees=err < tolerance)
            if err >= tolerance:
                failures.append(f"B={B} {name}: velocity relative error {err:.2e} >= {tolerance:.0e}")
    return list(rows.values())


# -- understanding ---------------------------------------------------------------------------------------

def understanding_rows(config, batch: int, text_tokens: int, device, dtype):
    """``batch`` rows of one image and ``text_tokens`` text ids each (bench_understanding's layout)."""
    from bench_understanding import understanding_batch
    from janusflow.processor import UnderstandingBatch

    parts = [understanding_batch(config, text_tokens, seed=i) for i in range(batch)]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    out = UnderstandingBatch(sft_format=[""] * batch, input_ids=cat("input_ids"), attention_mask=cat("attention_mask"),
                             pixel_values=cat("pixel_values"), images_seq_mask=cat("images_seq_mask"),
                             images_emb_mask=cat("images_emb_mask"))
    return out


def bench_understanding(model, args, device, record) -> None:
    from janusflow.understanding import DecodingConfig, decode

    for B in args.und_batches:
        batch = understanding_rows(model.config, B, args.text_tokens, device, model.dtype)
        run = lambda n: decode(model, batch, DecodingConfig(max_new_tokens=n), None, PAD)  # noqa: E731
        run(2)  # warm-up
        _, ttft = timed_runs(lambda: run(1), device, args.repeats)
        _, total = timed_runs(lambda: run(args.new_tokens), device, args.repeats)
        ttft_s, total_s = min(ttft), min(total)
        decode_s = max(total_s - ttft_s, 1e-9)
        row = {"batch": B, "prompt_tokens": int(batch.input_ids.shape[1]), "new_tokens": args.new_tokens,
               "ttft_s": ttft_s, "total_s": total_s,
               "tokens_per_s": B * (args.new_tokens - 1) / decode_s,  # all rows, after the first token
               "tokens_per_s_per_row": (args.new_tokens - 1) / decode_s}
        print(f"  understanding B={B}: prompt {row['prompt_tokens']} tokens, time to first token {ttft_s * 1e3:.1f} ms, "
              f"{row['tokens_per_s']:.1f} tokens/s ({row['tokens_per_s_per_row']:.1f} a row)", flush=True)
        record(row)


# -- driver ----------------------------------------------------------------------------------------------

def machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "cpu_count": os.cpu_count()}
    import transformers

    info["transformers"] = transformers.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
        info["sdpa_backends_enabled"] = {"flash": torch.backends.cuda.flash_sdp_enabled(),
                                         "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                                         "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                                         "math": torch.backends.cuda.math_sdp_enabled()}
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


COLUMNS = {
    "generation": ["batch", "path", "run_s", "images_per_s", "step_ms", "speedup_vs_release", "first_run_s", "setup_s",
                   "velocity_rel_err", "latents_rel_err", "agrees"],
    "understanding": ["batch", "prompt_tokens", "new_tokens", "ttft_s", "tokens_per_s", "tokens_per_s_per_row"],
    "training": ["run", "rows", "tokens_per_step", "step_s", "tokens_per_s", "model_tflop_per_step",
                 "achieved_tflops", "mfu", "peak_memory_gib", "peak_reserved_gib", "trainable_params"],
}


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def markdown(results: dict) -> str:
    lines = [f"# GPU benchmark: preset {results['args']['preset']}, {results['args']['dtype']}",
             "", "```", " ".join(results["command"]), "```", "", "Machine: " + json.dumps(results["machine"]), ""]
    for name, section in results["sections"].items():
        lines += [f"## {name}: {section['status']} ({section['seconds']:.1f} s)", ""]
        if section.get("error"):
            lines += [f"Error: `{section['error']}`", ""]
        for key, value in section.get("notes", {}).items():
            lines.append(f"- {key}: {value}")
        rows = section["rows"]
        if rows:
            cols = [c for c in COLUMNS[name] if any(c in r for r in rows)]
            lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="janusflow-1.3b", choices=sorted(PRESET_DEFAULTS))
    parser.add_argument("--sections", nargs="+", default=["generation", "understanding", "training"],
                        choices=["generation", "understanding", "training"])
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument("--device", default="auto", help="auto: cuda when available")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                        help="inference dtype (default: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--budget", nargs="+", default=["generation=180", "understanding=45", "training=180"],
                        help="SECTION=SECONDS time budgets")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--prompt-len", type=int, default=32, help="generation prompt ids (BOS ... tag)")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--compile", default="default", choices=["none", "default", "max-autotune-no-cudagraphs"],
                        help="torch.compile mode of the step also timed at --compile-batches, recorded as a CUDA "
                             "graph by fast_step (none: skip; max-autotune takes minutes to tune)")
    parser.add_argument("--compile-batches", type=int, nargs="*")
    parser.add_argument("--und-batches", type=int, nargs="+")
    parser.add_argument("--text-tokens", type=int, default=20)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--train-batch", type=int, help="samples per training step (und:gen:text 21:70:9)")
    parser.add_argument("--train-steps", type=int, help="timed training steps (after 2 warm-up steps)")
    parser.add_argument("--train-runs", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense bf16 peak for MFU (default: 989 on CUDA, the H100/H200 SXM spec; "
                             "on the CPU the measured fp32 matmul peak)")
    args = parser.parse_args(argv)
    for key, value in PRESET_DEFAULTS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    budgets = {k: float(v) for k, v in (item.split("=") for item in args.budget)}
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": [Path(sys.executable).name, "benchmarks/bench_gpu.py", *(argv if argv is not None else sys.argv[1:])],
               "args": vars(args), "machine": machine(device), "sections": {}}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (out / "results.md").write_text(markdown(results))

    print(f"# bench_gpu: preset {args.preset}, {args.dtype} on {results['machine'].get('gpu', device)}", flush=True)
    model = None
    for name in args.sections:
        section = results["sections"][name] = {"status": "running", "rows": [], "notes": {}, "seconds": 0.0}
        start = time.perf_counter()
        print(f"## {name} (budget {budgets.get(name, 300):.0f} s)", flush=True)
        guard = Budget(budgets.get(name, 300.0))
        try:
            with guard:
                if name == "training":
                    from _gpu_train import bench_training

                    if model is not None:  # the training runs build their own fp32 models
                        del model
                        model = None
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    bench_training(args, device, section["rows"].append, section["notes"])
                else:
                    if model is None:
                        built = time.perf_counter()
                        torch.manual_seed(0)
                        model = random_model(args.preset, dtype, device=device)
                        sync(device)
                        section["notes"]["model"] = (f"{model.num_parameters() / 1e9:.3f}B parameters, {args.dtype}, "
                                                     f"built in {time.perf_counter() - built:.1f} s")
                    fn = bench_generation if name == "generation" else bench_understanding
                    fn(model, args, device, section["rows"].append)
            section["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
            section["status"] = "partial" if section["rows"] else "failed"
            section["error"] = f"{type(e).__name__}: {e}"[:2000]
            if guard.expired and not isinstance(e, OutOfBudget):
                section["error"] = f"OutOfBudget: over its time budget of {guard.seconds:g} s ({section['error']})"
            traceback.print_exc()
        section["seconds"] = time.perf_counter() - start
        save()
    print(markdown(results), flush=True)
    return results


if __name__ == "__main__":
    main()
