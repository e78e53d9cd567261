"""Understanding speed at the 1.3B config (time to first token, tokens/s) and the peak resident memory
of each task, each task in its own fresh process (random weights, fp32, CPU).

    python benchmarks/bench_understanding.py --preset janusflow-1.3b --new-tokens 32

Tasks, one child process each (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at its end):
  load           the model built (random weights), nothing run: the floor of the others
  understanding  one image + a question (the official template's size: ~64 text tokens around the
                 576 image slots), prefill with the KV cache, then ``--new-tokens`` greedy tokens
                 (no end-of-sentence stop, so every run decodes the same number)
  generation     one image, guided (2 rows), ``--gen-steps`` cached Euler steps, then the decode by an
                 AutoencoderKL of the SDXL-VAE architecture (random weights) to pixels
Time to first token covers image encoding, prefill and the first token; tokens/s the tokens after it.
Times are given by wall clock and by the process's CPU time (on a machine shared with other jobs the
wall clock also counts time the cores ran someone else; with one thread the CPU time is exact).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from _common import BOS, PAD, machine, parse_args, peak_rss_gib, prompt_rows, random_model, run_child

HERE = Path(__file__).resolve()
BOI, IMAGE, EOI = 3, 4, 5  # synthetic special ids


def understanding_batch(config, text_tokens: int, seed: int = 0):
    """One row: BOS, half the text, boi + N image slots + eoi, the other half (as the template)."""
    from janusflow.processor import UnderstandingBatch

    g = torch.Generator().manual_seed(seed)
    N, S = config.num_und_image_tokens, config.und_vision.image_size
    text = torch.randint(10, config.language.vocab_size, (text_tokens,), generator=g).tolist()
    half = text_tokens // 2
    ids = [BOS, *text[:half], BOI, *[IMAGE] * N, EOI, *text[half:]]
    input_ids = torch.tensor([ids])
    seq_mask = (input_ids == IMAGE) | (input_ids == BOI)
    return UnderstandingBatch(sft_format=[""], input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                              pixel_values=torch.rand(1, 1, 3, S, S, generator=g) * 2 - 1,
                              images_seq_mask=seq_mask, images_emb_mask=torch.ones(1, 1, N + 1, dtype=torch.bool))


def sdxl_vae_architecture():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=1024,
                         scaling_factor=0.13025, force_upcast=True).eval()


class TokenClock:
    """A streamer that only timestamps: the prompt arrives first, then one ``put`` per new token."""

    def __init__(self):
        self.start = (time.perf_counter(), time.process_time())
        self.calls: list[tuple[float, float]] = []

    def put(self, value) -> None:
        self.calls.append((time.perf_counter(), time.process_time()))

    def end(self) -> None:
        self.calls.append((time.perf_counter(), time.process_time()))

    def rates(self) -> dict:
        """Time to first token and tokens/s after it, by wall clock and by CPU time."""
        first, last, n = self.calls[1], self.calls[-1], len(self.calls) - 2  # prompt put, n tokens, end
        return {"new_tokens": n,
                "ttft_s": first[0] - self.start[0], "ttft_cpu_s": first[1] - self.start[1],
                "tokens_per_s": (n - 1) / (last[0] - first[0]), "tokens_per_cpu_s": (n - 1) / (last[1] - first[1])}


def child(task: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    model = random_model(args.preset)
    result: dict = {"task": task, "build_s": time.perf_counter() - start}
    if task == "understanding":
        from janusflow.understanding import DecodingConfig, decode

        batch = understanding_batch(model.config, args.text_tokens)
        clock = TokenClock()
        out = decode(model, batch, DecodingConfig(max_new_tokens=args.new_tokens), None, PAD, streamer=clock)
        result.update(prompt_tokens=out.prompt_length, **clock.rates())
    elif task == "generation":
        from janusflow.sampler import SamplerConfig, initial_noise, sample_latents
        from janusflow.vae import decode as vae_decode, load_vae

        tokens, mask = prompt_rows(model.config, args.prompt_len, 1, guided=True)
        z0 = initial_noise(1, model.config, torch.Generator().manual_seed(0))
        t0 = time.perf_counter(), time.process_time()
        z = sample_latents(model, tokens, mask, z0, SamplerConfig(num_steps=args.gen_steps)).latents
        t1 = time.perf_counter(), time.process_time()
        vae = load_vae(sdxl_vae_architecture())
        t2 = time.perf_counter(), time.process_time()
        images = vae_decode(vae, z)
        t3 = time.perf_counter(), time.process_time()
        result.update(steps=args.gen_steps, s_per_step=(t1[0] - t0[0]) / args.gen_steps,
                      cpu_s_per_step=(t1[1] - t0[1]) / args.gen_steps, vae_decode_s=t3[0] - t2[0],
                      vae_decode_cpu_s=t3[1] - t2[1], image_size=list(images.shape[-2:]))
    result["peak_rss_gib"] = peak_rss_gib()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="janusflow-1.3b")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32, help="generation prompt length")
    parser.add_argument("--gen-steps", type=int, default=1)
    parser.add_argument("--tasks", nargs="+", default=["load", "understanding", "generation"])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parse_args(parser, threads_default=0)
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k in ("preset", "new_tokens", "text_tokens", "prompt_len", "gen_steps", "threads")]
    print(f"# {args.preset}, random weights, fp32, CPU; {machine()}")
    results = []
    for task in args.tasks:
        r = run_child(HERE, [task, *passthrough])
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    print("| task | peak RSS (GiB) | measurements |")
    print("|---|---|---|")
    for r in results:
        if r["task"] == "understanding":
            what = (f"prompt {r['prompt_tokens']} tokens (1 image); time to first token {r['ttft_s']:.1f} s wall, "
                    f"{r['ttft_cpu_s']:.1f} s CPU; {r['tokens_per_s']:.2f} tokens/s wall, "
                    f"{r['tokens_per_cpu_s']:.2f} per CPU second, over {r['new_tokens']} tokens")
        elif r["task"] == "generation":
            what = (f"guided Euler step {r['s_per_step']:.1f} s wall, {r['cpu_s_per_step']:.1f} s CPU "
                    f"({r['steps']} step(s)); VAE decode to {r['image_size'][0]}x{r['image_size'][1]} "
                    f"{r['vae_decode_s']:.1f} s wall, {r['vae_decode_cpu_s']:.1f} s CPU")
        else:
            what = f"model built in {r['build_s']:.1f} s"
        print(f"| {r['task']} | {r['peak_rss_gib']:.2f} | {what} |")


if __name__ == "__main__":
    main()
