"""``janusflow eval generation``, ``janusflow eval understanding`` and ``janusflow eval circular-questions``
(``janusflow eval shapes`` lives in janusflow/shapes/cli.py). docs/evaluation.md describes every metric.

    janusflow eval generation SAMPLES --reference DIR --feature-model DIR [--clip-model DIR] [--out FILE]
    janusflow eval understanding --metric pope --questions Q.jsonl --answers A.jsonl [--out FILE]
    janusflow eval circular-questions MC.jsonl OUT.jsonl
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

from ..cli import arg, command, command_group
from ..errors import InputError, JanusFlowWarning

command_group("eval", "scores: the shapes world, generation metrics (FID, KID, CLIP score), understanding "
                      "metrics (exact match, POPE, MME, MMBench circular, CIDEr)")


def _write(result: dict, out: str | None) -> None:
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"results: {path}")


def _settings_text(settings: dict[str, Any] | None) -> str:
    if settings is None:
        return "sampling settings unknown"
    return "sampling " + " ".join(f"{k}={v}" for k, v in settings.items()
                                  if isinstance(v, (int, float, str, bool)) or v is None)


@command("eval generation", "FID, KID and CLIP score of a GenEval-layout folder (local feature / CLIP models only)",
         arg("samples", metavar="SAMPLES", help="GenEval layout: SAMPLES/{i:05d}/metadata.jsonl, samples/*.png"),
         arg("--reference", metavar="DIR", help="reference images for FID and KID (searched recursively)"),
         arg("--feature-model", metavar="DIR", help="local CLIP or SigLIP folder whose image embeddings FID and KID "
                                                     "compare (default: --clip-model)"),
         arg("--clip-model", metavar="DIR", help="local CLIP folder (model + tokenizer) for the CLIP score"),
         arg("--sampling-settings", metavar="FILE", help="JSON of the settings that made the samples (default: "
                                                        "SAMPLES/janusflow_generation.json, which generate writes)"),
         arg("--out", metavar="FILE", help="write the results as JSON"),
         arg("--batch-size", type=int, default=32, help="images embedded together"),
         arg("--kid-subsets", type=int, default=100),
         arg("--seed", type=int, default=0, help="for KID's random subsets"),
         arg("--device", default=None, help="cpu, cuda, ... (default: cpu)"),
         arg("--dtype", choices=("fp32", "bf16"), default="fp32", help="of the feature / CLIP model"))
def generation(args: argparse.Namespace) -> int:
    import torch

    from .clip_score import clip_score_of
    from .distribution import fid_kid
    from .features import ImageEmbedder, TextEmbedder, embed_images, model_folder
    from .images import geneval_samples, image_files, sampling_settings

    if args.reference is None and args.clip_model is None:
        raise InputError("nothing to compute: give --reference DIR (FID, KID) and/or --clip-model DIR (CLIP score)")
    feature_folder = args.feature_model or args.clip_model
    if args.reference is not None and feature_folder is None:
        raise InputError("FID and KID need --feature-model DIR (a local CLIP or SigLIP folder; nothing downloads)")
    samples = geneval_samples(args.samples)  # every input checked before a model loads
    reference = image_files(args.reference) if args.reference is not None else None
    settings = sampling_settings(args.samples, args.sampling_settings)
    option = "--feature-model" if args.feature_model else "--clip-model"
    if feature_folder is not None:
        model_folder(feature_folder, option)
    if args.clip_model is not None:
        model_folder(args.clip_model, "--clip-model", tokenizer=True)
    if settings is None:
        warnings.warn(f"no janusflow_generation.json in {args.samples}: the sampling settings are unknown "
                      "(pass --sampling-settings FILE)", JanusFlowWarning, stacklevel=1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    common = {"samples": str(Path(args.samples).resolve()), "n_generated": len(samples), "sampling": settings}
    records: list[dict[str, Any]] = []

    generated = feature_embedder = None
    if reference is not None:
        feature_embedder = ImageEmbedder(feature_folder, args.device, dtype, option)
        generated = embed_images(feature_embedder, [s.path for s in samples], args.batch_size, True, "generated")
        real = embed_images(feature_embedder, reference, args.batch_size, True, "reference")
        scores = fid_kid(real, generated, args.kid_subsets, args.seed)
        where = {"feature": feature_embedder.name, "reference": str(Path(args.reference).resolve()),
                 "n_reference": scores.n_real}
        records.append({"metric": "fid", "value": scores.fid, **where, **common})
        records.append({"metric": "kid", "value": scores.kid_mean, "std": scores.kid_std,
                        "subsets": scores.kid_subsets, "subset_size": scores.kid_subset_size, "seed": args.seed,
                        **where, **common})
    if args.clip_model is not None:
        same = feature_embedder is not None and Path(feature_folder).resolve() == Path(args.clip_model).resolve()
        clip = feature_embedder if same else ImageEmbedder(args.clip_model, args.device, dtype, "--clip-model")
        text = TextEmbedder(clip)  # the tokenizer is checked before the images are embedded
        images = generated if same else embed_images(clip, [s.path for s in samples], args.batch_size, True,
                                                      "generated")
        score = clip_score_of(samples, images, text)
        records.append({"metric": "clip_score", "value": score.mean, "std": score.std, "model": clip.name,
                        **common})

    for r in records:
        extra = f" ± {r['std']:.4f}" if r["metric"] == "kid" else ""
        against = f"{r['n_generated']} images vs {r['n_reference']} reference" if "n_reference" in r \
            else f"{r['n_generated']} images vs their prompts"
        print(f"{r['metric']:<10} {r['value']:.4f}{extra}  ({against}; {r.get('feature') or r.get('model')}; "
              f"{_settings_text(settings)})")
    _write({"metrics": records}, args.out)
    return 0


def _format(result: dict, indent: str = "") -> list[str]:
    lines = []
    for key, value in result.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}")
            lines += _format(value, indent + "  ")
        elif isinstance(value, float):
            lines.append(f"{indent}{key:<24} {value:.4f}")
        else:
            lines.append(f"{indent}{key:<24} {value}")
    return lines


@command("eval understanding", "a standard understanding metric from a questions file and an answers file",
         arg("--metric", required=True, choices=("exact-match", "pope", "mme", "multiple-choice", "cider")),
         arg("--questions", required=True, metavar="Q.jsonl", help="question lines with their references"),
         arg("--answers", required=True, metavar="A.jsonl",
             help="the LLaVA answers file (janusflow ask --question-file)"),
         arg("--out", metavar="FILE", help="write the results as JSON"))
def understanding(args: argparse.Namespace) -> int:
    from .understanding import score_understanding

    result = score_understanding(args.metric, args.questions, args.answers)
    print("\n".join(_format(result)))
    _write(result, args.out)
    return 0


@command("eval circular-questions", "write each multiple-choice question once per rotation of its options "
                                    "(MMBench's circular evaluation), as LLaVA question lines",
         arg("source", metavar="MC.jsonl", help='lines {"question_id", "question", "options", "answer", ["image", '
                                               '"hint", "category"]}'),
         arg("out", metavar="OUT.jsonl"))
def circular(args: argparse.Namespace) -> int:
    from ..jsonl import read_jsonl, write_jsonl
    from .multiple_choice import circular_questions

    lines = []
    for number, _, question in read_jsonl(args.source, "question file"):
        try:
            lines += circular_questions(question)
        except InputError as e:
            raise InputError(f"{args.source}:{number}: {e}") from None
    if not lines:
        raise InputError(f"{args.source}: no questions")
    write_jsonl(args.out, lines)
    print(f"wrote {len(lines)} question(s) to {args.out}")
    return 0
