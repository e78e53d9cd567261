"""``janusflow eval shapes``: the shapes-world scores of a model (:mod:`janusflow.shapes.eval_run`).

    janusflow eval shapes [--model DIR] [--out DIR] [--prompts-per-category 50] [--num-images-per-prompt 4]
                          [--questions 1000] [--seed 0] [--candidates N] [--num-inference-steps 30]
                          [--guidance-scale 2.0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import arg, command, model_dir
from .eval_run import DEFAULT_GUIDANCE, DEFAULT_STEPS, evaluate_shapes, format_results  # noqa: F401


@command("eval shapes", "score a model on the shapes world (GenEval and LLaVA layouts, exact scorer)",
         arg("--model", metavar="DIR", help="model folder; default: the embedded model"),
         arg("--out", default="runs/eval-shapes", metavar="DIR", help="images, answers and results.json"),
         arg("--prompts-per-category", type=int, default=50),
         arg("--num-images-per-prompt", "--images-per-prompt", dest="images_per_prompt", type=int, default=4,
             metavar="K", help="images per prompt (alias --images-per-prompt)"),
         arg("--num-inference-steps", "--steps", dest="num_inference_steps", type=int, default=DEFAULT_STEPS,
             metavar="N", help="ODE steps (alias --steps)"),
         arg("--guidance-scale", "--cfg", dest="guidance_scale", type=float, default=DEFAULT_GUIDANCE, metavar="W",
             help="classifier-free guidance weight (alias --cfg)"),
         arg("--questions", type=int, default=1000),
         arg("--seed", type=int, default=0),
         arg("--batch-size", type=int, default=8, help="questions answered together"),
         arg("--candidates", type=int, default=None, metavar="N",
             help="each image the best of up to N by the model's self-check (1: the plain sampler; default: "
                  "the model's image_generation_config.json, as `janusflow generate` uses it)"),
         arg("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"),
         arg("--device", default=None, help="cpu, cuda, ... (default: cuda if available)"),
         arg("--quantize", choices=("none", "int8"), default="none", help="int8: the LLM's linear layers in int8"))
def eval_main(args: argparse.Namespace) -> int:
    if args.threads is not None:
        import torch

        from ..errors import InputError

        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")

        torch.set_num_threads(args.threads)
    from ..sampler import SamplerConfig

    SamplerConfig(args.num_inference_steps, args.guidance_scale).validate()
    folder = model_dir(args)
    results = evaluate_shapes(folder, args.out, args.prompts_per_category, args.images_per_prompt, args.questions,
                              args.seed, steps=args.num_inference_steps, guidance=args.guidance_scale,
                              batch_size=args.batch_size, device=args.device, candidates=args.candidates,
                              quantize=args.quantize)
    print(format_results(results))
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0


from .recipe import cli as _recipe_cli  # noqa: E402,F401  (registers `janusflow recipe`)
