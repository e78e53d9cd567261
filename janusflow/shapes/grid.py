"""A picture of a GenEval-layout folder: one row per prompt category, the first image of its first
prompts, each under its prompt and the scorer's verdict (green frame: passes, red: fails).

    janusflow eval shapes  ->  OUT/grid.png   (the README's grid of the default model)
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .evaluate import read_jsonl
from .prompts import parse_prompt
from .scorer import score_image
from .world import CATEGORIES

PASS, FAIL, INK, PAPER = (40, 160, 60), (200, 40, 40), (20, 20, 20), (255, 255, 255)


def sample_grid(folder: str | Path, per_category: int = 6, scale: int = 2) -> Image.Image:
    """The grid of ``folder`` (``00000/metadata.jsonl``, ``00000/samples/0000.png``, ...): per category,
    the first image of each of its first ``per_category`` prompts, ``scale`` times enlarged."""
    if per_category < 1 or scale < 1:
        raise ValueError("per_category and scale must be >= 1")
    chosen: dict[str, list[tuple[str, Path]]] = {tag: [] for tag in CATEGORIES}
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir() and p.name.isdigit()):
        prompt = read_jsonl(sub / "metadata.jsonl")[0]["prompt"]
        tag = parse_prompt(prompt).tag
        first = sub / "samples" / "0000.png"
        if first.is_file() and len(chosen[tag]) < per_category:
            chosen[tag].append((prompt, first))
    font = ImageFont.load_default()
    side, pad, label_w, text_h = 64 * scale, 6, 110, 40
    cell_w, cell_h = side + 2 * pad, side + 2 * pad + text_h
    rows = [tag for tag in CATEGORIES if chosen[tag]]
    sheet = Image.new("RGB", (label_w + per_category * cell_w, len(rows) * cell_h), PAPER)
    draw = ImageDraw.Draw(sheet)
    for r, tag in enumerate(rows):
        y = r * cell_h
        draw.text((6, y + side // 2), tag.replace("_", " "), fill=INK, font=font)
        for c, (prompt, path) in enumerate(chosen[tag]):
            x = label_w + c * cell_w
            with Image.open(path) as image:
                image = image.convert("RGB")
                ok = score_image(parse_prompt(prompt), image)
                image = image.resize((side, side), Image.NEAREST)
            draw.rectangle([x + pad - 3, y + pad - 3, x + pad + side + 2, y + pad + side + 2], fill=PASS if ok else FAIL)
            sheet.paste(image, (x + pad, y + pad))
            for k, line in enumerate(textwrap.wrap(prompt, 22)[:3]):
                draw.text((x + pad, y + side + 2 * pad + 11 * k), line, fill=INK, font=font)
    return sheet
