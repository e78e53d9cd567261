"""A toy dataset in the documented formats: coloured shapes, their captions, questions, text.

Used by the tests, the benchmark and the docs' end-to-end example. ``write_toy_data(folder)``
writes ``images/*.png``, ``und.jsonl`` (LLaVA style), ``gen.jsonl``, ``text.jsonl`` and a
byte-level BPE ``tokenizer/`` (no download needed).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")


def draw(colour: str, shape: str, size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(image)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (d.rectangle if shape == "square" else d.ellipse)(box, fill=COLOURS[colour])
    return image


def write_toy_data(folder: str | os.PathLike, count: int = 16, vocab_size: int = 300, seed: int = 0) -> dict[str, str]:
    """Write the toy dataset; return {"und", "gen", "text", "tokenizer"} paths."""
    from ..tokenizer_build import build_tokenizer

    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    und, gen, text = [], [], []
    for i in range(count):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        name = f"images/{i:04d}.png"
        draw(colour, shape).save(root / name)
        gen.append({"image": name, "caption": f"a {colour} {shape}"})
        und.append({"image": name, "conversations": [
            {"from": "human", "value": f"<image>\nWhat colour is the {shape}?"},
            {"from": "gpt", "value": f"It is {colour}."}]})
        text.append({"text": f"The {shape} is {colour}. A {colour} {shape} sits on white."})
    for name, rows in (("und", und), ("gen", gen), ("text", text)):
        with open(root / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    corpus = [r["text"] for r in text] + [r["caption"] for r in gen] + [
        "You are a helpful language and vision assistant. User: Assistant: What colour is it?"] * 4
    build_tokenizer(corpus, vocab_size=vocab_size, out_dir=root / "tokenizer")
    return {k: os.fspath(root / v) for k, v in
            (("und", "und.jsonl"), ("gen", "gen.jsonl"), ("text", "text.jsonl"), ("tokenizer", "tokenizer"))}


def toy_overrides(paths: dict[str, str], run_dir: str | os.PathLike, stage: str = "sft") -> list[str]:
    """``key=value`` overrides for a run of the ``tiny`` model on :func:`write_toy_data`'s data."""
    return [f"run_dir={os.fspath(run_dir)}", "model.preset=tiny", f"model.tokenizer={paths['tokenizer']}",
            "vae.tiny_random=true", f"stage={stage}", "stage.batch_size=6", "stage.steps=4", "stage.warmup_steps=0",
            "stage.lr=2e-3", f"data.und=[{paths['und']}]", f"data.gen=[{paths['gen']}]",
            f"data.text=[{paths['text']}]", "losses.repa_layer=1", "trainer.progress=false"]
