"""Learning curves (score vs step) as a PNG, drawn with Pillow (no plotting library needed).

One panel a metric; in each, one colour an arm: a thin line per seed and a thick line through the
seeds' mean at each step. The y axis is the score, 0..1; the x axis the training step.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]
Curve = list[tuple[float, float]]  # (step, score), step increasing


def mean_curve(curves: list[Curve]) -> Curve:
    """The mean over seeds at each step that every seed reached."""
    steps = sorted(set.intersection(*(set(x for x, _ in c) for c in curves))) if curves else []
    return [(x, sum(dict(c)[x] for c in curves) / len(curves)) for x in steps]


def draw_curves(panels: dict[str, dict[str, list[Curve]]], path: str | Path, title: str = "",
                width: int = 420, height: int = 320) -> Path:
    """``panels``: metric -> arm -> one curve a seed. Writes the PNG at ``path``."""
    font = ImageFont.load_default()
    arms = list(dict.fromkeys(arm for by_arm in panels.values() for arm in by_arm))
    colour = {arm: COLOURS[i % len(COLOURS)] for i, arm in enumerate(arms)}
    legend_h, title_h = 18 * ((len(arms) + 2) // 3) + 8, 22 if title else 0
    image = Image.new("RGB", (width * len(panels), height + legend_h + title_h), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((8, 5), title, fill="black", font=font)
    for i, (metric, by_arm) in enumerate(panels.items()):
        _panel(draw, font, (i * width, title_h), (width, height), metric, by_arm, colour)
    for j, arm in enumerate(arms):  # the legend, three arms a row
        x, y = 12 + (j % 3) * 180, title_h + height + 6 + 18 * (j // 3)
        draw.line([(x, y + 6), (x + 24, y + 6)], fill=colour[arm], width=3)
        draw.text((x + 30, y), arm, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _panel(draw, font, origin, size, metric, by_arm, colour) -> None:
    (ox, oy), (w, h) = origin, size
    left, right, top, bottom = ox + 44, ox + w - 12, oy + 22, oy + h - 30
    xs = [x for curves in by_arm.values() for c in curves for x, _ in c]
    x_max = max(xs, default=1) or 1

    def at(x: float, y: float) -> tuple[float, float]:  # data -> pixels (y in 0..1)
        return left + (right - left) * x / x_max, bottom - (bottom - top) * min(max(y, 0.0), 1.0)

    draw.text((left, oy + 5), metric, fill="black", font=font)
    for k in range(6):  # y grid at 0, 0.2, ... 1
        y = k / 5
        _, py = at(0, y)
        draw.line([(left, py), (right, py)], fill=(225, 225, 225))
        draw.text((ox + 8, py - 6), f"{y:.1f}", fill="black", font=font)
    for k in range(5):  # x ticks
        x = x_max * k / 4
        px, _ = at(x, 0)
        draw.line([(px, bottom), (px, bottom + 4)], fill="black")
        draw.text((px - 10, bottom + 6), f"{x:.0f}" if x_max >= 8 else f"{x:g}", fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) // 2 - 10, bottom + 17), "step", fill="black", font=font)
    for arm, curves in by_arm.items():
        faint = tuple(int(c + (255 - c) * 0.6) for c in colour[arm])
        for c in curves:
            _line(draw, [at(x, y) for x, y in c], faint, 1)
        _line(draw, [at(x, y) for x, y in mean_curve(curves)], colour[arm], 3)


def _line(draw, points, fill, width) -> None:
    if len(points) == 1:
        x, y = points[0]
        draw.ellipse([x - width - 1, y - width - 1, x + width + 1, y + width + 1], fill=fill)
    elif points:
        draw.line(points, fill=fill, width=width)
