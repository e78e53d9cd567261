"""When a sample's composition settles: the scorer reads the sampler's prediction of the data at every step.

    python -m experiments.settle [--model DIR] [--category counting] [--prompts 50] [--images 4]
                                             [--seed 0] [--threads 1] [--out FILE.json]

At step k of the Euler loop (z_k at time t_k, velocity v_k) the rectified flow's straight-line
prediction of the data is

    x1_hat_k = z_k + (1 - t_k) * v_k

(at the last uniform step, t = 1 - 1/n, it is the sampler's result itself). Each x1_hat_k is decoded
and read by the exact scorer; a sample's object count *settles* at the first step from which every
later prediction holds as many objects as the final image. Where the counts settle says at which
times the velocity decides a picture's layout, so which times training must get right.

The prompts and the noise are those of ``janusflow eval shapes --prompts-per-category P --seed S``:
the category's prompts of ``evaluate.geneval_metadata(P, S)``, prompt i of the whole list drawing its
noise from S + i, so the final images are the evaluation's (the guided sampler at its defaults, 30
Euler steps, guidance 2) and their pass rate is its score for the category.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from janusflow.errors import JanusFlowError
from janusflow.pipeline import JanusFlowPipeline, default_model_dir
from janusflow.sampler import SamplerConfig, initial_noise, sample_latents, time_grid
from janusflow.vae import decode, to_pil
from janusflow.shapes.evaluate import geneval_metadata
from janusflow.shapes.prompts import parse_prompt
from janusflow.shapes.scorer import Detection, detect_objects, passes
from janusflow.shapes.world import CATEGORIES


def predicted_data(trajectory: torch.Tensor, velocities: torch.Tensor, ts: list[float]) -> torch.Tensor:
    """x1_hat_k = z_k + (1 - t_k) v_k for every step k: (n, B, C, H, W) from the recorded
    trajectory z_0 .. z_n (n+1, B, ...) and velocities v_0 .. v_{n-1} (n, B, ...)."""
    n = velocities.shape[0]
    remaining = torch.tensor([1.0 - t for t in ts[:n]], dtype=velocities.dtype).view(n, *[1] * (velocities.ndim - 1))
    return trajectory[:n] + remaining * velocities


def settle_step(counts: list[int]) -> int:
    """The first step from which every count equals the last one (the final image's)."""
    k = len(counts) - 1
    while k > 0 and counts[k - 1] == counts[-1]:
        k -= 1
    return k


def trace(pipe: JanusFlowPipeline, prompt: str, noise: torch.Tensor,
          cfg: SamplerConfig) -> list[list[list[Detection]]]:
    """For each image of ``noise`` (B, C, H, W): per step 0..n, the scorer's detections in x1_hat_k
    (step n: the final image)."""
    batch = pipe.processor.build_generation_batch([prompt] * noise.shape[0], 1, guidance=cfg.guided)
    result = sample_latents(pipe.model, batch.input_ids, batch.attention_mask, noise, cfg, record=True)
    steps = torch.cat([predicted_data(result.trajectory, result.velocities, time_grid(cfg)), result.latents[None]])
    per_step = [[detect_objects(image) for image in to_pil(decode(pipe.vae, x1))]
                for x1 in steps]  # (n + 1) x B
    return [list(column) for column in zip(*per_step)]  # B x (n + 1)


def summarize(records: list[dict], num_steps: int) -> dict:
    """Pass rate of the predictions per step, and the share of passing / failing samples whose count
    has settled by each step."""
    settled = {"pass": [0] * (num_steps + 1), "fail": [0] * (num_steps + 1)}
    passing = [0] * (num_steps + 1)
    for r in records:
        group = "pass" if r["passes"][-1] else "fail"
        for k in range(r["settle"], num_steps + 1):
            settled[group][k] += 1
        for k, ok in enumerate(r["passes"]):
            passing[k] += ok
    sizes = {g: settled[g][-1] for g in settled}  # every sample has settled by the last step
    return {
        "samples": len(records),
        "final_pass_rate": passing[-1] / len(records),
        "pass_rate_by_step": [round(p / len(records), 4) for p in passing],
        "settled_by_step": {g: [round(c / max(sizes[g], 1), 4) for c in settled[g]] for g in settled},
        "samples_by_group": sizes,
    }


def run(pipe: JanusFlowPipeline, category: str, prompts: int, images: int, seed: int) -> dict:
    cfg = SamplerConfig()  # the evaluation's (and the pipeline's) defaults: 30 Euler steps, guidance 2
    records = []
    metadata = geneval_metadata(prompts, seed)  # janusflow eval shapes --prompts-per-category P --seed S
    chosen = [(i, m) for i, m in enumerate(metadata) if m["tag"] == category]
    for i, meta in chosen:
        spec = parse_prompt(meta["prompt"])
        noise = initial_noise(images, pipe.model.config, torch.Generator().manual_seed(seed + i))  # the evaluation's
        for image, steps in enumerate(trace(pipe, meta["prompt"], noise, cfg)):
            counts = [len(objects) for objects in steps]
            records.append({"index": i, "prompt": meta["prompt"], "image": image, "counts": counts,
                            "settle": settle_step(counts),
                            "passes": [passes(spec, objects) for objects in steps]})
    return {"category": category, "settings": {"prompts": len(chosen), "images": images, "seed": seed,
                                                "num_inference_steps": cfg.num_steps,
                                                "guidance_scale": cfg.guidance_scale, "times": time_grid(cfg)},
            "summary": summarize(records, cfg.num_steps), "records": records}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model folder (default: the embedded model)")
    parser.add_argument("--category", default="counting", choices=CATEGORIES)
    parser.add_argument("--prompts", type=int, default=50, help="prompts a category, as the evaluation's")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write every sample's record here (JSON)")
    args = parser.parse_args(argv)
    for name in ("prompts", "images", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    model = args.model or default_model_dir()
    if model is None:
        parser.error("no embedded model is installed: pass --model DIR")
    try:
        pipe = JanusFlowPipeline.from_pretrained(model, device="cpu")
    except JanusFlowError as e:
        parser.error(f"--model {model}: {e}")
    result = run(pipe, args.category, args.prompts, args.images, args.seed)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result["summary"], result["settings"]["times"]))


def table(summary: dict, ts: list[float]) -> str:
    """The summary as text: a row per step."""
    sizes = summary["samples_by_group"]
    lines = [f"{summary['samples']} samples, final pass rate {summary['final_pass_rate']:.3f}",
             f"step  t      predictions passing  settled: passing ({sizes['pass']})  failing ({sizes['fail']})"]
    settled = summary["settled_by_step"]
    for k, rate in enumerate(summary["pass_rate_by_step"]):
        lines.append(f"{k:4d}  {ts[k]:.3f}  {rate:19.3f}  {settled['pass'][k]:17.3f}  {settled['fail'][k]:12.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
