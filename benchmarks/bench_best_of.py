"""Best-of-N by self-check on the embedded model: the time of one image for N candidates, against
plain sampling (N = 1) in the same process, and the judge's share of it.

    python benchmarks/bench_best_of.py --candidates 1 2 3 4 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import _common  # noqa: F401  (puts the repository root on sys.path)
from janusflow.pipeline import JanusFlowPipeline, default_model_dir
from janusflow.shapes.self_check import ShapesJudge
from janusflow.understanding import JanusFlowChat

PROMPTS = ("a red circle", "three squares", "a circle above a square", "a red circle and a blue square")


class TimedJudge(ShapesJudge):
    """The judge, with the seconds (wall, CPU) its calls took."""

    def __call__(self, prompt, images):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return super().__call__(prompt, images)
        finally:
            self.spent[0] += time.perf_counter() - wall
            self.spent[1] += time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = JanusFlowPipeline.from_pretrained(default_model_dir(), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    judge = TimedJudge(JanusFlowChat(pipe.model, pipe.processor))
    print(f"threads {torch.get_num_threads()}; one image of each prompt, median of {args.repeats} seeds "
          f"after a warm-up; seconds as wall / CPU")
    print("| candidates | one image | of it, the judge | CPU time vs N = 1 |")
    print("|---|---|---|---|")
    base = None
    for n in args.candidates:
        walls, cpus, judged = [], [], []
        for prompt in PROMPTS:
            pipe(prompt, generator=0, candidates=n, judge=judge)  # warm-up
            for seed in range(args.repeats):
                judge.spent = [0.0, 0.0]
                wall, cpu = time.perf_counter(), time.process_time()
                pipe(prompt, generator=seed, candidates=n, judge=judge)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
                judged.append(tuple(judge.spent))
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        j_wall, j_cpu = (statistics.median(x[i] for x in judged) for i in (0, 1))
        base = base or cpu
        print(f"| {n} | {wall:.3f} / {cpu:.3f} | {j_wall:.3f} / {j_cpu:.3f} | {cpu / base:.2f}x |")


if __name__ == "__main__":
    main()
