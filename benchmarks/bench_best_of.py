"""Best-of-N by self-check on the embedded model: the time of one image for N candidates, against
plain sampling (N = 1) in the same process, and the judge's share of it.

    python benchmarks/bench_best_of.py --candidates 1 2 4 --prompts 10 --threads 1

Prompts: the first P of every category in the evaluation's list (``evaluate.geneval_metadata(50, 0)``),
one image each from seed 1000 + i. The judge stops an image at its first perfect candidate, so an
image's time depends on how soon one passes: the table gives the mean (what a run of many prompts
costs an image) beside the median and the slowest, and the candidates drawn per image.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import _common  # noqa: F401  (puts the repository root on sys.path)
from janusflow.best_of import CountingJudge
from janusflow.pipeline import JanusFlowPipeline, default_model_dir
from janusflow.shapes.evaluate import geneval_metadata
from janusflow.shapes.self_check import ShapesJudge
from janusflow.shapes.world import CATEGORIES
from janusflow.understanding import JanusFlowChat


class TimedJudge(CountingJudge):
    """A judge with the seconds (wall, CPU) its calls took, beside the images it read (``read``)."""

    def __call__(self, prompt, images):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return super().__call__(prompt, images)
        finally:
            self.spent[0] += time.perf_counter() - wall
            self.spent[1] += time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--prompts", type=int, default=10, help="prompts a category")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = JanusFlowPipeline.from_pretrained(default_model_dir(), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    judge = TimedJudge(ShapesJudge(JanusFlowChat(pipe.model, pipe.processor)))
    metadata = geneval_metadata(50, 0)
    prompts = [m["prompt"] for tag in CATEGORIES for m in [m for m in metadata if m["tag"] == tag][:args.prompts]]
    print(f"threads {torch.get_num_threads()}; one image for each of {len(prompts)} prompts ({args.prompts} a "
          f"category) after a warm-up; CPU seconds (wall within a few % on an idle machine)")
    print("| candidates | one image: mean | median | slowest | of the mean, the judge | candidates drawn | "
          "mean vs N = 1 |")
    print("|---|---|---|---|---|---|---|")
    base, by_category = None, {}
    for n in args.candidates:
        pipe(prompts[0], generator=0, candidates=n, judge=judge)  # warm-up
        cpus, judged, drawn = [], [], []
        for i, prompt in enumerate(prompts):
            judge.spent, judge.read = [0.0, 0.0], 0
            cpu = time.process_time()
            pipe(prompt, generator=1000 + i, candidates=n, judge=judge)
            cpus.append(time.process_time() - cpu)
            judged.append(judge.spent[1])
            drawn.append(judge.read if n > 1 else 1)
        mean = statistics.fmean(cpus)
        base = base or mean
        print(f"| {n} | {mean:.3f} | {statistics.median(cpus):.3f} | {max(cpus):.3f} | "
              f"{statistics.fmean(judged):.3f} | {statistics.fmean(drawn):.2f} | {mean / base:.2f}x |")
        P = args.prompts
        by_category[n] = [statistics.fmean(cpus[k * P:(k + 1) * P]) for k in range(len(CATEGORIES))]
    print("\nmean CPU seconds of one image by category")
    print("| candidates | " + " | ".join(CATEGORIES) + " |")
    print("|---|" + "---|" * len(CATEGORIES))
    for n, means in by_category.items():
        print(f"| {n} | " + " | ".join(f"{m:.3f}" for m in means) + " |")


if __name__ == "__main__":
    main()
