"""Score against cost: the shapes evaluation's one-sample generation score for solvers, step counts and
guidance intervals, with the cost of each measured as guided velocity evaluations per image.

    python benchmarks/bench_steps.py --prompts-per-category 50 --seed 7 --out runs/bench-steps

Every configuration samples the same prompts from the same noise (prompt i: seed + i), one image a
prompt, no best-of (``candidates=1``), and is scored by the exact scorer. The cost is counted, not
derived: a forward pre-hook on the generation encoder adds up the latent rows the LLM runs, and a
guided evaluation is two rows (conditional + unconditional), so a step outside the guidance interval
costs half of one. Results: ``OUT/results.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from janusflow.image_folders import generate_geneval  # noqa: E402
from janusflow.jsonl import write_jsonl  # noqa: E402
from janusflow.pipeline import JanusFlowPipeline, default_model_dir  # noqa: E402
from janusflow.shapes.evaluate import geneval_metadata, score_geneval_folder  # noqa: E402
from janusflow.shapes.world import CATEGORIES  # noqa: E402

# (name, solver, steps, guidance interval[, guidance scale: 2 unless given])
CONFIGS = [
    ("euler-30", "euler", 30, None),
    ("euler-8", "euler", 8, None),
    ("euler-4", "euler", 4, None),
    ("euler-2", "euler", 2, None),
    ("heun-2", "heun", 2, None),
    ("heun-3", "heun", 3, None),
    ("midpoint-2", "midpoint", 2, None),
    ("midpoint-4", "midpoint", 4, None),
    ("heun-6", "heun", 6, None),
    ("euler-4, interval 0-0.5", "euler", 4, (0.0, 0.5)),
    ("heun-3, interval 0-0.5", "heun", 3, (0.0, 0.5)),
    ("midpoint-2, interval 0-0.5", "midpoint", 2, (0.0, 0.5)),
    ("midpoint-3, interval 0-0.3", "midpoint", 3, (0.0, 0.3)),
    ("euler-5, interval 0-0.4", "euler", 5, (0.0, 0.4)),
    ("euler-6, interval 0-0.2", "euler", 6, (0.0, 0.2)),
    # unguided (one row a step, half an evaluation): for a reflowed model, which learnt the guided map
    ("euler-1, guidance 1", "euler", 1, None, 1.0),
    ("euler-2, guidance 1", "euler", 2, None, 1.0),
    ("euler-4, guidance 1", "euler", 4, None, 1.0),
    ("euler-8, guidance 1", "euler", 8, None, 1.0),
    ("euler-30, guidance 1", "euler", 30, None, 1.0),
    ("midpoint-2, guidance 1", "midpoint", 2, None, 1.0),
    ("midpoint-4, guidance 1", "midpoint", 4, None, 1.0),
]


class RowCounter:
    """Latent rows through the generation encoder (each row is one LLM pass over 1 + N tokens)."""

    def __init__(self, module: torch.nn.Module):
        self.rows = 0
        module.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.rows += int(args[0].shape[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    p.add_argument("--prompts-per-category", type=int, default=50)
    p.add_argument("--seed", type=int, default=7, help="prompts and noise (not the seeds settings were chosen on)")
    p.add_argument("--configs", default=None, help="names from CONFIGS separated by ; (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-steps")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = JanusFlowPipeline.from_pretrained(args.model or default_model_dir(), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    counter = RowCounter(pipe.model.gen_encoder)
    metadata = out / "metadata.jsonl"
    write_jsonl(metadata, geneval_metadata(args.prompts_per_category, args.seed))
    chosen = [c for c in CONFIGS if args.configs is None or c[0] in args.configs.split(";")]
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    for name, solver, steps, interval, *scale in chosen:
        guidance = scale[0] if scale else 2.0
        if name in results:
            continue
        counter.rows = 0
        folder = out / name.replace(" ", "").replace(",", "_")
        start = time.process_time()
        generate_geneval(pipe, metadata, folder, num_images=1, seed=args.seed, show_progress=False,
                         num_inference_steps=steps, guidance_scale=guidance, solver=solver, candidates=1,
                         guidance_interval=interval)
        cpu = time.process_time() - start
        scores = score_geneval_folder(folder)
        images = scores["n_images"]
        results[name] = {"solver": solver, "steps": steps, "guidance_scale": guidance, "guidance_interval": interval,
                         "evaluations": counter.rows / (2 * images), "cpu_seconds_per_image": cpu / images,
                         "scores": scores}
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name}: {scores['overall']:.3f} ({results[name]['evaluations']:.1f} evaluations)", flush=True)
    print("\n| sampler | guided evaluations an image | " + " | ".join(CATEGORIES) + " | overall | CPU s an image |")
    print("|---|---|" + "---|" * len(CATEGORIES) + "---|---|")
    for name, r in results.items():
        cells = " | ".join(f"{r['scores'].get(c, float('nan')):.3f}" for c in CATEGORIES)
        print(f"| {name} | {r['evaluations']:.1f} | {cells} | **{r['scores']['overall']:.3f}** | "
              f"{r['cpu_seconds_per_image']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
