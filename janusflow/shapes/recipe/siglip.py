"""Recipe part 2: the understanding encoder, pre-trained with SigLIP's sigmoid image-text loss.

Image tower: transformers `SiglipVisionModel` built from an `UnderstandingVisionConfig` (what
`janusflow.und_vision.UnderstandingEncoder` wraps), with its attention-pool head giving the image
embedding. Text tower: transformers `SiglipTextModel` over the world's tokenizer, captions padded
to `max_text_tokens` and pooled at the last position, as SigLIP does. Both embeddings are
L2-normalised; for images x_i and captions y_j of a batch of B,

    logit_ij = t * <x_i, y_j> + b,      t = exp(t'), learnable t' (init log 10) and b (init -2)
    loss     = -(1 / B) sum_i sum_j log sigmoid(z_ij * logit_ij)

with z_ij = +1 where caption j is true of image i and -1 elsewhere. SigLIP sets z = +1 on the
diagonal only; here a caption's truth is known exactly (the scorer's `passes` for prompts, equality
for descriptions), so the off-diagonal pairs that are also true ("a circle" for two images with
circles) are labelled true instead of being pushed apart.

Bias init: SigLIP's -10 suits one true pair among 32k; here about 15% of the pairs of a batch of
128 are true (log-odds about -1.7), and at Adam's learning rate b moves about 1e-3 a step, so -10
would take thousands of steps to correct. -2 starts near the batch's prior.

Captions: with probability `description_share` the scene's description as a question and its
answer (`describe the image. a red circle and a blue square`: every object, left to right), else
a true prompt of a random category (`caption_for_scene`). The question keeps a description from
reading as a prompt: alone, "a red circle and a blue square" is also a color_attr prompt, true of
any scene holding both objects, and a first run with bare descriptions could not learn order or
count from them (it preferred the true description to one with its neighbours swapped, or with its
last object dropped, about half the time).

Hard negatives: beside each description caption (with probability `hard_negative_share`) the batch
gets one extra text, a near miss of that description (`near_miss`: an object recoloured, reshaped,
dropped or added, two neighbours swapped, or two objects' colours exchanged), true of no image of
the batch unless it happens to describe one exactly, so the image-by-text label matrix is
B x (B + E). Random batches almost never hold two scenes that differ by one object (NegCLIP,
Yuksekgonul et al. 2023, fixed CLIP's order and binding blindness the same way).

JanusFlow reads the tower's token features (last_hidden_state), not the pooled vector; the
pooled loss trains them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import UnderstandingVisionConfig
from ...train.trainer import share
from ..prompts import all_prompts, caption_for_scene, parse_prompt
from ..questions import DESCRIBE_QUESTION, describe
from ..scorer import passes
from ..world import CATEGORIES, COLORS, SHAPES, Scene
from .data import EVAL_SEED, batch_rng, scene_images


def default_vision() -> UnderstandingVisionConfig:
    """64 x 64 images, patch 8: an 8 x 8 token grid (the generation grid: latent 16 / patch 2)."""
    return UnderstandingVisionConfig(image_size=64, patch_size=8, width=128, num_layers=4, num_heads=4,
                                     mlp_dim=512, use_attention_pool=True)


@dataclass
class SiglipConfig:
    vision: UnderstandingVisionConfig = field(default_factory=default_vision)
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_mlp: int = 512
    max_text_tokens: int = 24
    init_log_temperature: float = math.log(10.0)
    init_bias: float = -2.0  # the log-odds of a true pair in our batches, see the module docstring
    description_share: float = 0.5
    hard_negative_share: float = 1.0  # near-miss descriptions beside description captions

    def text_config(self, vocab_size: int, pad_id: int, eos_id: int):
        from transformers import SiglipTextConfig

        return SiglipTextConfig(
            vocab_size=vocab_size, hidden_size=self.text_width, intermediate_size=self.text_mlp,
            num_hidden_layers=self.text_layers, num_attention_heads=self.text_heads,
            max_position_embeddings=self.max_text_tokens, projection_size=self.vision.width,
            pad_token_id=pad_id, bos_token_id=None, eos_token_id=eos_id,
        )


def tiny_siglip() -> SiglipConfig:
    return SiglipConfig(
        vision=UnderstandingVisionConfig(image_size=64, patch_size=16, width=16, num_layers=1, num_heads=2,
                                         mlp_dim=32, use_attention_pool=True),
        text_width=16, text_layers=1, text_heads=2, text_mlp=32, max_text_tokens=64,  # small vocabularies
    )


def sigmoid_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-image SigLIP loss, (B,): -sum_j log sigmoid(z_ij * logit_ij); `labels` z in {-1, +1}."""
    return -F.logsigmoid(labels * logits).sum(1)


class SiglipPair(nn.Module):
    """Image tower + text tower + temperature and bias. forward(batch, totals) -> (loss share, logs)."""

    def __init__(self, cfg: SiglipConfig, vocab_size: int, pad_id: int, eos_id: int):
        super().__init__()
        from transformers import SiglipTextModel, SiglipVisionModel

        self.cfg = cfg
        self.vision = SiglipVisionModel(cfg.vision.to_siglip())
        self.text = SiglipTextModel(cfg.text_config(vocab_size, pad_id, eos_id))
        self.log_temperature = nn.Parameter(torch.tensor(cfg.init_log_temperature))
        self.bias = nn.Parameter(torch.tensor(cfg.init_bias))

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, D) unit vectors."""
        return F.normalize(self.vision(pixel_values=pixels).pooler_output, dim=-1)

    def embed_texts(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) padded ids -> (B, D) unit vectors."""
        return F.normalize(self.text(input_ids=ids).pooler_output, dim=-1)

    def logits(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """(B_img, D), (B_txt, D) -> (B_img, B_txt)."""
        return images @ texts.T * self.log_temperature.exp() + self.bias

    def forward(self, batch: dict[str, torch.Tensor], totals: dict[str, float]):
        logits = self.logits(self.embed_images(batch["pixels"]), self.embed_texts(batch["ids"]))  # (B, B)
        per_image = sigmoid_loss(logits, batch["labels"])
        loss = share(per_image.sum(), totals, "samples")
        return loss, {"siglip": float(loss.detach()), "temperature": float(self.log_temperature.exp().detach()),
                      "bias": float(self.bias.detach())}


def encode_captions(tokenizer, captions: list[str], length: int) -> torch.Tensor:
    """(B, length) ids, no BOS, right-padded with the pad id (truncation is an error)."""
    rows = [tokenizer.encode(c, add_special_tokens=False) for c in captions]
    longest = max(len(r) for r in rows)
    if longest > length:
        raise ValueError(f"a caption has {longest} tokens, over max_text_tokens = {length}")
    return torch.tensor([r + [tokenizer.pad_token_id] * (length - len(r)) for r in rows], dtype=torch.int64)


Look = tuple[str, str]  # (colour, shape)


def description_text(looks: list[Look]) -> str:
    """(colour, shape) items, in order, joined as `describe` joins them."""
    items = [f"a {color} {shape}" for color, shape in looks]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def description_caption(text: str) -> str:
    """A description as a caption: the question and its answer, so that no description reads as a
    prompt ("a red circle and a blue square" alone is also a color_attr prompt, true of every
    scene holding both objects; with the question it means exactly these objects, in this order)."""
    return f"{DESCRIBE_QUESTION} {text}"


EDITS: tuple[str, ...] = ("recolour", "reshape", "drop", "add", "swap", "exchange")


def edit_looks(rng: np.random.Generator, looks: list[Look], kind: str) -> list[Look] | None:
    """`looks` (left to right) changed one way, or None when `kind` does not apply: an object
    recoloured or reshaped, dropped (2+ objects) or added (3 or fewer), two neighbours swapped,
    or two objects' colours exchanged (binding). The result may equal `looks` (e.g. a recolour to
    the same colour); callers check."""
    edit, n = list(looks), len(looks)
    i, j = int(rng.integers(n)), int(rng.integers(n))
    if kind == "recolour":
        edit[i] = (COLORS[int(rng.integers(len(COLORS)))], edit[i][1])
    elif kind == "reshape":
        edit[i] = (edit[i][0], SHAPES[int(rng.integers(len(SHAPES)))])
    elif kind == "drop" and n >= 2:
        del edit[i]
    elif kind == "add" and n <= 3:
        edit.insert(int(rng.integers(n + 1)), (COLORS[int(rng.integers(len(COLORS)))],
                                               SHAPES[int(rng.integers(len(SHAPES)))]))
    elif kind == "swap" and n >= 2:
        k = int(rng.integers(n - 1))
        edit[k], edit[k + 1] = edit[k + 1], edit[k]
    elif kind == "exchange" and n >= 2:
        edit[i], edit[j] = (edit[j][0], edit[i][1]), (edit[i][0], edit[j][1])
    else:
        return None
    return edit


def ordered_looks(scene: Scene) -> list[Look]:
    """(colour, shape) of the objects in `describe`'s order (left to right, ties top first)."""
    return [(o.color, o.shape) for o in sorted(scene.objects, key=lambda o: (o.cx, o.cy, o.shape, o.color))]


def near_miss(rng: np.random.Generator, scene: Scene) -> str:
    """A description caption that differs from the scene's in one way (`edit_looks`, a kind drawn
    uniformly among EDITS, redrawn until the text changes)."""
    looks = ordered_looks(scene)
    while True:
        edit = edit_looks(rng, looks, EDITS[int(rng.integers(len(EDITS)))])
        if edit is not None and edit != looks:
            return description_caption(description_text(edit))


def caption_is_true(caption: str, scene: Scene) -> bool:
    """A description caption is true of the scene with exactly that description (objects and
    order); a prompt of every scene that passes it."""
    if caption.startswith(DESCRIBE_QUESTION + " "):
        return description_caption(describe(scene)) == caption
    return passes(parse_prompt(caption), scene.objects)


def true_matrix(scenes: list[Scene], captions: list[str]) -> torch.Tensor:
    """(B_img, B_txt) in {-1, +1}: +1 where caption j is true of scene i."""
    truth = [[caption_is_true(c, s) for c in captions] for s in scenes]
    return torch.tensor(truth, dtype=torch.float32) * 2 - 1


class SiglipTask:
    """Recipe part 2 as a `janusflow.train.TrainTask`. Batch `step` is a pure function of (seed, step)."""

    def __init__(self, tokenizer, cfg: SiglipConfig | None = None, batch_size: int = 128, seed: int = 2):
        self.cfg = cfg or SiglipConfig()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.module = SiglipPair(self.cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)

    def captions(self, rng: np.random.Generator, scenes: list[Scene]) -> tuple[list[str], list[str | None]]:
        """One caption per scene, and per scene a near-miss description or None (only beside a
        description caption, with probability `hard_negative_share`)."""
        captions, near = [], []
        for scene in scenes:
            if rng.random() < self.cfg.description_share:
                captions.append(description_caption(describe(scene)))
                near.append(near_miss(rng, scene) if rng.random() < self.cfg.hard_negative_share else None)
            else:
                captions.append(caption_for_scene(rng, scene)[1])
                near.append(None)
        return captions, near

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.module.named_parameters())

    def micro_batches(self, step: int, shard) -> list[dict[str, torch.Tensor]]:
        rng = batch_rng(self.seed, step)
        scenes, pixels = scene_images(rng, self.batch_size)
        captions, near = self.captions(rng, scenes)
        batches = []
        for m in range(shard.grad_accum):
            lo, hi = shard.bounds(len(scenes), m)  # each micro-batch is its own contrastive batch
            texts = captions[lo:hi] + [t for t in near[lo:hi] if t is not None]  # B image captions, then E extra
            batches.append({
                "pixels": pixels[lo:hi],
                "ids": encode_captions(self.tokenizer, texts, self.cfg.max_text_tokens),
                "labels": true_matrix(scenes[lo:hi], texts),  # (B, B + E)
            })
        return batches

    def counts(self, batch) -> dict[str, float]:
        return {"samples": float(len(batch["pixels"]))}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def export(self, directory: Path) -> None:
        """directory/und_encoder (the image tower, what JanusFlow uses), directory/text_tower, and
        directory/siglip_head.json (temperature, bias)."""
        import json

        directory = Path(directory)
        self.module.vision.save_pretrained(directory / "und_encoder")
        self.module.text.save_pretrained(directory / "text_tower")
        head = {"temperature": float(self.module.log_temperature.detach().exp()), "bias": float(self.module.bias.detach())}
        (directory / "siglip_head.json").write_text(json.dumps(head) + "\n", encoding="utf-8")


def patch_labels(scenes: list[Scene], patch: int) -> torch.Tensor:
    """(N, grid^2) class of each patch, row-major: 0 background, 1 + 3 * colour + shape for the
    object owning most of the patch's pixels (when it owns at least half of them)."""
    from ..render import shape_mask
    from ..world import IMAGE_SIZE

    grid = IMAGE_SIZE // patch
    labels = torch.zeros(len(scenes), grid * grid, dtype=torch.int64)
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            owned = shape_mask(obj).reshape(grid, patch, grid, patch).sum((1, 3)).reshape(-1)  # pixels a patch
            cls = 1 + 3 * COLORS.index(obj.color) + SHAPES.index(obj.shape)
            labels[i, torch.from_numpy(owned >= patch * patch / 2)] = cls
    return labels


@torch.enable_grad()
def patch_probe(tokens: torch.Tensor, labels: torch.Tensor, train_share: float = 0.75, steps: int = 300) -> dict[str, float]:
    """Fit a linear classifier (softmax regression, Adam) on the patch tokens of the first
    `train_share` of the images; accuracy on the others, over all patches and object patches."""
    cut = int(len(tokens) * train_share)
    x = tokens.detach().flatten(0, 1)
    x = (x - x[:cut * tokens.shape[1]].mean(0)) / (x[:cut * tokens.shape[1]].std(0) + 1e-6)
    y = labels.flatten()
    split = cut * tokens.shape[1]
    torch.manual_seed(0)
    head = nn.Linear(x.shape[1], 1 + len(COLORS) * len(SHAPES))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(x[:split]), y[:split]).backward()
        opt.step()
    with torch.no_grad():
        right = head(x[split:]).argmax(1) == y[split:]
    objects = y[split:] > 0
    return {"probe_acc": float(right.float().mean()), "probe_object_acc": float(right[objects].float().mean())}


@torch.no_grad()
def near_miss_preference(pair: SiglipPair, tokenizer, scenes: list[Scene], images: torch.Tensor,
                         rng: np.random.Generator) -> dict[str, float]:
    right: dict[str, list[bool]] = {kind: [] for kind in EDITS}
    for scene, image in zip(scenes, images):
        looks = ordered_looks(scene)
        edits = {kind: edit_looks(rng, looks, kind) for kind in EDITS}
        edits = {kind: e for kind, e in edits.items() if e is not None and e != looks}
        texts = [description_caption(description_text(e)) for e in [looks, *edits.values()]]
        scores = pair.embed_texts(encode_captions(tokenizer, texts, pair.cfg.max_text_tokens)) @ image
        for kind, score in zip(edits, scores[1:]):
            right[kind].append(bool(scores[0] > score))
    result = {f"near_{kind}": float(np.mean(v)) for kind, v in right.items() if v}
    result["near_acc"] = float(np.mean([c for v in right.values() for c in v]))
    return result


@torch.no_grad()
def evaluate_siglip(pair: SiglipPair, tokenizer, num_scenes: int = 256, seed: int = EVAL_SEED + 2) -> dict[str, float]:
    """On fresh scenes:

    describe_top1   image -> text retrieval among the scenes' own descriptions: the best-scoring
                    description is the image's (string equal; ties between equal scenes count right);
                    describe_count: the best one has the image's number of objects
    prompt_acc      every image against all 240 prompts, read as true when logit > 0: accuracy
                    against the scorer's `passes`; prompt_bal_acc: mean of the true- and
                    false-pair accuracies
    near_<kind>     the share of images whose description caption scores above a near miss of
                    it of that kind (`edit_looks`); near_acc over all kinds
    probe_acc       what JanusFlow reads, the token features: a linear probe (`patch_probe`) on
                    them names the (colour, shape) owning each 8 x 8 patch, or background
    """
    was_training = pair.training
    pair.eval()
    rng = np.random.default_rng(seed)
    scenes, pixels = scene_images(rng, num_scenes)
    images = torch.cat([pair.embed_images(pixels[i:i + 128]) for i in range(0, num_scenes, 128)])
    descriptions = [description_caption(describe(s)) for s in scenes]
    length = pair.cfg.max_text_tokens
    texts = pair.embed_texts(encode_captions(tokenizer, descriptions, length))
    best = pair.logits(images, texts).argmax(1).tolist()
    describe_top1 = float(np.mean([descriptions[j] == descriptions[i] for i, j in enumerate(best)]))
    describe_count = float(np.mean([len(scenes[j].objects) == len(scenes[i].objects) for i, j in enumerate(best)]))

    prompts = [p for tag in CATEGORIES for p in all_prompts(tag)]
    prompt_texts = pair.embed_texts(encode_captions(tokenizer, [p.text for p in prompts], length))
    said = (pair.logits(images, prompt_texts) > 0).numpy()  # (N, 240)
    truth = np.array([[passes(p, s.objects) for p in prompts] for s in scenes])
    near = near_miss_preference(pair, tokenizer, scenes, images, np.random.default_rng(seed + 1))
    tokens = torch.cat([pair.vision(pixel_values=pixels[i:i + 128]).last_hidden_state
                        for i in range(0, num_scenes, 128)])  # (N, grid^2, W)
    probe = patch_probe(tokens, patch_labels(scenes, pair.cfg.vision.patch_size))
    pair.train(was_training)
    return {
        **probe,
        **near,
        "describe_top1": describe_top1,
        "describe_count": describe_count,
        "prompt_acc": float((said == truth).mean()),
        "prompt_bal_acc": float(0.5 * (said[truth].mean() + (~said[~truth]).mean())),
    }
