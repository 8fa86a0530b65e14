"""A small synthetic dataset of captioned images (for the demo and the tests)."""

from __future__ import annotations

import random
from pathlib import Path

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40)}


def write_synthetic_dataset(
    root: str | Path,
    concepts: dict[str, int] | None = None,
    images_per_concept: int = 6,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    captions: bool = True,
) -> Path:
    """Write ``root/<repeats>_<name>/img_NNN.png`` + ``.txt`` captions.

    ``concepts`` maps folder names ("5_shapes") to image counts; by default
    one concept ``4_shapes`` with ``images_per_concept`` images.  Images are
    simple coloured shapes on a plain background, captioned with what they show.
    """
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    root = Path(root)
    concepts = concepts or {"4_shapes": images_per_concept}
    for folder, count in concepts.items():
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = SHAPES[i % len(SHAPES)]
            colour = list(COLOURS)[rng.randrange(len(COLOURS))]
            bg = tuple(rng.randrange(200, 256) for _ in range(3))
            w, h = size
            img = Image.new("RGB", (w, h), bg)
            draw = ImageDraw.Draw(img)
            m = min(w, h)
            x0, y0 = rng.randrange(0, w // 4 + 1), rng.randrange(0, h // 4 + 1)
            box = (x0, y0, x0 + m // 2 + rng.randrange(m // 4 + 1), y0 + m // 2 + rng.randrange(m // 4 + 1))
            fill = COLOURS[colour]
            if shape == "circle":
                draw.ellipse(box, fill=fill)
            elif shape == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=fill)
            name = f"img_{i:03d}"
            img.save(d / f"{name}.png")
            if captions:
                (d / f"{name}.txt").write_text(f"toy, a {colour} {shape}, plain background\n", encoding="utf-8")
    return root
