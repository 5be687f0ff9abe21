"""Measure `fasthpt prep` throughput; append one JSON line per case to bench/prep.jsonl.

Cases: the embedded `sat` dataset at its default size, and a folder of 256 px JPEGs
(random 256x256 crops of scikit-image's photographs, quality 90, one class per photo), kept at
256 px (stored unchanged) and shrunk to 128 px (the re-encode path). Each run is
a fresh `fasthpt prep` process (what a user pays, FFCV's ~4 s import included); the median of
--runs runs is reported, with the decode+encode phase alone (from the manifest) beside it.

    .venv/bin/python bench/prep_bench.py --runs 3 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fasthpt.fileio import append_jsonl, run_metadata

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def make_jpeg_folder(root: Path, count: int, side: int = 256) -> Path:
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    for k in range(count):
        name = PHOTOS[k % len(PHOTOS)]
        photo = getattr(data, name)()
        y = rng.integers(0, photo.shape[0] - side + 1)
        x = rng.integers(0, photo.shape[1] - side + 1)
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[y : y + side, x : x + side, :3]).save(root / name / f"{k:05d}.jpg", quality=90)
    return root


def run_case(args, name: str, extra: list[str]) -> dict:
    walls, converts = [], []
    for _ in range(args.runs):
        cmd = [sys.executable, "-m", "fasthpt.cli", "prep", "--dataset", name, "--out", str(args.out),
               "--workers", str(args.workers), "--force", "--no-progress", *extra]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
        manifest = json.loads((args.out / name / "manifest.json").read_text())
        converts.append(manifest["timing"]["convert_s"])
    n = sum(s["count"] for s in manifest["splits"].values())
    return {
        "bench": "prep", "case": name, "images": n, "max_hw": manifest["storage"]["max_hw"],
        "passthrough_jpegs": manifest["storage"]["passthrough_jpegs"], "workers": args.workers,
        "formats": manifest["formats"], "runs": args.runs,
        "images_per_s": round(n / statistics.median(walls), 1),
        "convert_images_per_s": round(n / statistics.median(converts), 1),
        "wall_s": [round(w, 2) for w in walls], "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: context for the figure
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), **run_metadata(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--jpegs", type=int, default=500)
    p.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--jsonl", type=Path, default=ROOT / "bench" / "prep.jsonl")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="prepbench-") as tmp:
        args.out = args.out or Path(tmp) / "out"
        folder = make_jpeg_folder(Path(tmp) / "jpeg256", args.jpegs)
        results = [
            run_case(args, "sat", []),
            # max-res 256: the JPEGs are stored unchanged (one decode each, for the statistics)
            run_case(args, "jpeg256", ["--src", str(folder)]),
            # max-res 128: every image is decoded, resized, re-encoded and decoded again
            run_case(args, "jpeg256-to-128", ["--src", str(folder), "--max-res", "128"]),
        ]
    for r in results:
        print(json.dumps(r))
    append_jsonl(args.jsonl, *results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
