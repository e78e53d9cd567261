"""Online flow-DPO: the model's own samples, judged by the exact scorer, as preference pairs.

    python -m experiments.preference OUT [--model DIR] [--rounds 4] [--images 8]
        [--steps 150] [--beta 1000] [--lr 2e-5] [--t-max 0.5] [--device cuda]

Flow-GRPO (Liu et al., 2025) trains a flow model against GenEval's rule-based checker; the shapes
world has an exact scorer, so that signal is free here. This is its cheapest form, online
Diffusion-DPO (Wallace et al., 2023) with the scorer as the judge. Each round:

    collect  prompts of every category (``prompts``: how many a category, drawn afresh), each
             sampled ``images_per_prompt`` times by the current model at the default sampler
             settings (30 Euler steps, guidance 2); the scorer reads each image: pass or fail
    pair     within a prompt, passing latents against failing ones (at most ``pairs_per_prompt``)
    train    ``steps`` AdamW steps of ``batch_pairs`` pairs on :func:`~janusflow.train.losses.flow_dpo_loss`:
             x0 ~ N(0, I) and t (logit-normal, scaled into (0, t_max): composition is decided early)
             shared by both latents of a pair; the reference is the starting model, frozen

``OUT/round-{r:03d}/`` is a model folder (fp32 weights) with ``round.json``: pass rates per category,
pairs, mean loss, and ``ranked_right``, the share of the round's fresh pairs the model ranked right
(policy-minus-reference error lower on the passing latent) *before* training on them, the test of
whether the preference generalises. A run resumes after its newest finished round (the optimiser
starts afresh each round). On the 2-core CPU a round of the defaults takes about 7 minutes and four
rounds moved nothing past the noise (docs/recipe.md, "Preference optimisation on the model's own
samples"); sampling is where a GPU is hundreds of times faster.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from janusflow.errors import ConfigError
from janusflow.flow import TIME_SCALE, guided_velocity, interpolate, sample_time
from janusflow.prompt_rows import generation_mask, position_ids_from_left_padding
from janusflow.train.losses import flow_dpo_loss, flow_errors
from janusflow.shapes.prompts import PromptSpec, all_prompts
from janusflow.shapes.scorer import score_image
from janusflow.shapes.world import CATEGORIES
from janusflow.shapes.recipe.soup import write_merged

DEFAULT_PROMPTS = {"counting": 9, "position": 24, "two_object": 6, "color_attr": 40, "colors": 12, "single_object": 3}
Judge = Callable[[PromptSpec, object], bool]  # (prompt, PIL image) -> passes


@dataclass
class PreferenceConfig:
    rounds: int = 4
    prompts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PROMPTS))
    images_per_prompt: int = 8
    pairs_per_prompt: int = 8
    steps: int = 150
    batch_pairs: int = 16
    lr: float = 2e-5
    beta: float = 1000.0
    t_max: float = 0.5
    guidance: float = 1.0  # 1: the loss on the conditional velocity; w: on the guided one (w = 2 samples)
    grad_clip: float = 1.0
    sample_batch: int = 64  # images sampled together while collecting
    seed: int = 0

    def validate(self) -> None:
        unknown = sorted(set(self.prompts) - set(CATEGORIES))
        if unknown or not any(self.prompts.values()) or any(n < 0 for n in self.prompts.values()):
            raise ConfigError(f"prompts: a count >= 0 for some of {list(CATEGORIES)}, at least one > 0; "
                              f"got {self.prompts}")
        for name in ("rounds", "images_per_prompt", "pairs_per_prompt", "steps", "batch_pairs", "sample_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.images_per_prompt < 2:
            raise ConfigError("images_per_prompt must be >= 2: a pair needs a passing and a failing image")
        if not (self.lr > 0 and self.beta > 0 and 0 < self.t_max <= 1 and self.grad_clip >= 0 and self.guidance >= 0):
            raise ConfigError("lr and beta must be > 0, t_max in (0, 1], grad_clip and guidance >= 0")


def draw_prompts(rng: random.Random, counts: dict[str, int]) -> list[PromptSpec]:
    """``counts[tag]`` distinct prompts of each category (all of them when it has fewer)."""
    specs = []
    for tag in CATEGORIES:
        pool = list(all_prompts(tag))
        specs += rng.sample(pool, min(counts.get(tag, 0), len(pool)))
    return specs


def pair_up(passed: Sequence[bool], cap: int, rng: random.Random) -> list[tuple[int, int]]:
    """Up to ``cap`` (passing index, failing index) pairs drawn from every such combination."""
    wins = [i for i, ok in enumerate(passed) if ok]
    losses = [i for i, ok in enumerate(passed) if not ok]
    pairs = [(w, l) for w in wins for l in losses]
    rng.shuffle(pairs)
    return pairs[:cap]


@dataclass
class Collected:
    latents: torch.Tensor  # (P * K, C, S, S), fp32 on the CPU
    pairs: list[tuple[str, int, int]]  # (prompt text, winner row, loser row)
    pass_rates: dict[str, float]


def collect(pipe, specs: list[PromptSpec], images_per_prompt: int, pairs_per_prompt: int, seed: int,
            rng: random.Random, judge: Judge = score_image, batch_size: int = 64) -> Collected:
    """Sample, judge and pair (see the module docstring); ``pipe`` is a JanusFlowPipeline with a VAE."""
    from janusflow.vae import decode, to_pil

    k = images_per_prompt
    with torch.no_grad():
        latents = pipe([s.text for s in specs], num_images_per_prompt=k, generator=seed, output_type="latent",
                       batch_size=batch_size).images
        images = to_pil(decode(pipe.vae, latents))
    pairs, tally = [], {}
    for p, spec in enumerate(specs):
        passed = [bool(judge(spec, images[p * k + j])) for j in range(k)]
        ok, n = tally.get(spec.tag, (0, 0))
        tally[spec.tag] = (ok + sum(passed), n + k)
        pairs += [(spec.text, p * k + w, p * k + l) for w, l in pair_up(passed, pairs_per_prompt, rng)]
    return Collected(latents.cpu(), pairs, {t: round(ok / n, 4) for t, (ok, n) in tally.items()})


class FlowDPO:
    """The policy (trained) and the frozen reference, and the DPO loss on a batch of pairs."""

    def __init__(self, policy, processor, beta: float, t_max: float, guidance: float = 1.0):
        self.policy, self.processor, self.beta, self.t_max = policy, processor, beta, t_max
        self.guidance = guidance
        self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if policy.device.type == "cuda"
                         else nullcontext())

    def errors(self, model, prompts: list[str], x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B,) flow errors of ``model`` under ``prompts`` at x_t = t x1 + (1 - t) x0: of the conditional
        velocity, or with ``guidance`` w != 1 of the guided one the sampler follows,
        w v_cond - (w - 1) v_uncond (the unconditional rows as at sampling)."""
        guided = self.guidance != 1.0
        batch = self.processor.build_generation_batch(prompts, 1, guidance=guided).to(x1.device)
        ids, prompt_mask = batch.input_ids, batch.attention_mask
        n = model.config.gen_vision.grid_for(x1.shape[-1]) * model.config.gen_vision.grid_for(x1.shape[-2])
        mask = generation_mask(prompt_mask, n)
        x_t = interpolate(x0, x1, t)
        rows = 2 if guided else 1
        with self.autocast:
            out = model.forward_generation(model.embed_prompt(ids), torch.cat([x_t] * rows),
                                           torch.cat([t] * rows) * TIME_SCALE, attention_mask=mask,
                                           position_ids=position_ids_from_left_padding(mask))
        velocity = guided_velocity(*out.velocity.float().chunk(2), self.guidance) if guided else out.velocity
        return flow_errors(velocity, x0, x1)

    def loss(self, prompts: list[str], win: torch.Tensor, lose: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, logits (P,)) for P pairs; both latents of a pair share x0 and t."""
        P = len(prompts)
        x0 = torch.randn(win.shape, generator=generator).to(win.device)
        t = (sample_time(P, generator=generator) * self.t_max).to(win.device)
        x0, x1, t, rows = torch.cat([x0, x0]), torch.cat([win, lose]), torch.cat([t, t]), prompts + prompts
        errors = self.errors(self.policy, rows, x0, x1, t)
        with torch.no_grad():
            ref_errors = self.errors(self.reference, rows, x0, x1, t)
        per_pair, logits = flow_dpo_loss(errors[:P], ref_errors[:P], errors[P:], ref_errors[P:], self.beta)
        return per_pair.mean(), logits


def pair_batch(collected: Collected, picks: list[tuple[str, int, int]],
               device: torch.device) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(prompts, winner latents, loser latents) of ``picks``, the latents on ``device``."""
    rows = torch.tensor([[w, l] for _, w, l in picks])
    win, lose = collected.latents[rows[:, 0]], collected.latents[rows[:, 1]]
    return [p for p, _, _ in picks], win.to(device), lose.to(device)


def ranked_right(dpo: FlowDPO, collected: Collected, generator: torch.Generator, limit: int = 256) -> float | None:
    """Share of (up to ``limit``) pairs whose passing latent the policy, against the reference, prefers."""
    pairs = collected.pairs[:limit]
    if not pairs:
        return None
    right = 0
    with torch.no_grad():
        for i in range(0, len(pairs), 32):
            _, logits = dpo.loss(*pair_batch(collected, pairs[i:i + 32], dpo.policy.device), generator)
            right += int((logits > 0).sum())
    return right / len(pairs)


def round_dir(out: Path, r: int) -> Path:
    return out / f"round-{r:03d}"


def run(model_dir: str | os.PathLike, out: str | os.PathLike, cfg: PreferenceConfig, device: str | None = None,
        judge: Judge = score_image, log: Callable[[str], None] = print) -> list[dict]:
    """Every round not yet finished under ``out``; returns every round's record."""
    from janusflow.pipeline import JanusFlowPipeline, resolve_device

    cfg.validate()
    start, out = Path(os.fspath(model_dir)), Path(os.fspath(out))
    done = [r for r in range(cfg.rounds) if (round_dir(out, r) / "round.json").is_file()]
    first = len(done)
    if done != list(range(first)):
        raise ConfigError(f"{out}: finished rounds {done} are not 0..{first - 1}; remove the stray ones")
    records = [json.loads((round_dir(out, r) / "round.json").read_text(encoding="utf-8")) for r in done]
    if first == cfg.rounds:
        return records
    device = resolve_device(device)
    pipe = JanusFlowPipeline.from_pretrained(start, device=device, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    dpo = FlowDPO(pipe.model, pipe.processor, cfg.beta, cfg.t_max, cfg.guidance)  # the reference: the start model
    if first:  # resume: the policy of the last finished round
        from janusflow.checkpoint import read_safetensors

        pipe.model.load_state_dict(read_safetensors([round_dir(out, first - 1) / "model.safetensors"]))
    out.mkdir(parents=True, exist_ok=True)
    for r in range(first, cfg.rounds):
        round_seed = cfg.seed * 1000 + r
        rng, generator = random.Random(round_seed), torch.Generator().manual_seed(round_seed)
        pipe.model.eval()
        collected = collect(pipe, draw_prompts(rng, cfg.prompts), cfg.images_per_prompt, cfg.pairs_per_prompt,
                            round_seed, rng, judge, cfg.sample_batch)
        record = {"round": r, "pass": collected.pass_rates, "pairs": len(collected.pairs),
                  "ranked_right": ranked_right(dpo, collected, generator) if r else None}
        losses = []
        if collected.pairs:
            pipe.model.train()
            params = [p for p in pipe.model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
            for _ in range(cfg.steps):
                picks = [collected.pairs[rng.randrange(len(collected.pairs))] for _ in range(cfg.batch_pairs)]
                loss, _ = dpo.loss(*pair_batch(collected, picks, device), generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
        record["loss"] = sum(losses) / len(losses) if losses else None
        state = {k: v.detach().float().cpu() for k, v in pipe.model.state_dict().items()}
        folder = write_merged(start, round_dir(out, r), state,
                              {"preference": {"start": str(start), "round": r, **dataclasses.asdict(cfg)}})
        (folder / "round.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        log(json.dumps(record))
        records.append(record)
    return records


def main(argv: list[str] | None = None) -> None:
    from janusflow.pipeline import default_model_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="run folder: OUT/round-000/, round-001/, ...")
    parser.add_argument("--model", default=None, help="the model to start from (default: the embedded one)")
    parser.add_argument("--prompts", default=None,
                        help="prompts a category, e.g. counting:9,position:24 (default: %s)" % ",".join(
                            f"{k}:{v}" for k, v in DEFAULT_PROMPTS.items()))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    for f in dataclasses.fields(PreferenceConfig):
        if f.name != "prompts":
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = dict(DEFAULT_PROMPTS)
    if args.prompts:
        try:
            prompts = {k: int(v) for k, v in (item.split(":") for item in args.prompts.split(","))}
        except ValueError:
            parser.error(f"--prompts: expected tag:count,tag:count, got {args.prompts!r}")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PreferenceConfig) if f.name != "prompts"}
    model = args.model or default_model_dir()
    if model is None:
        parser.error("no --model given and no embedded default model is installed")
    try:
        run(model, args.out, PreferenceConfig(prompts=prompts, **values), args.device)
    except ConfigError as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
