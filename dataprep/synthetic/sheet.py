"""Contact sheet of an embedded dataset: a few samples per class, one row per class, labelled.

    python -m dataprep.synthetic.sheet sat docs/sat_samples.png --per-class 6 --palette

Used to judge the generators by eye (docs/sat_samples.png is made this way).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dataprep.synthetic import EMBEDDED, get_generator

LABEL_W = 112  # px of text column at the left of each row
PAD = 2


def contact_sheet(name: str, per_class: int = 6, image_size: int = 64, seed: int = 0) -> Image.Image:
    """One row per class: the class name, then `per_class` samples (indices c, c+C, c+2C, ...)."""
    probe = get_generator(name, num_images=1, image_size=image_size, seed=seed)
    n_cls = len(probe.classes)
    gen = get_generator(name, num_images=n_cls * per_class, image_size=image_size, seed=seed)
    cell = image_size + PAD
    sheet = Image.new("RGB", (LABEL_W + per_class * cell, n_cls * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for c, cls in enumerate(gen.classes):
        draw.text((4, c * cell + image_size // 2 - 6), cls, fill="black")
        for k in range(per_class):
            img, label = gen.render(c + k * n_cls)
            assert label == c
            shown = gen.preview(img) if hasattr(gen, "preview") else img  # N bands: a true-colour view
            sheet.paste(Image.fromarray(shown), (LABEL_W + k * cell, c * cell))
    return sheet


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=list(EMBEDDED))
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=6)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--palette", action="store_true",
                   help="quantise to 256 colours (a third of the file size; for docs)")
    a = p.parse_args(argv)
    sheet = contact_sheet(a.name, a.per_class, a.image_size, a.seed)
    if a.palette:
        sheet = sheet.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(a.out.name + ".tmp")
    sheet.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, a.out)  # never leave a half-written sheet under the final name
    print(f"wrote {a.out} ({a.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
