"""Stage what one device call carried of the GPU bundle (bench/gpu_bundle.py) on the GPU machine.

Each call brings some of .gpu-bundle/call-*/; each file is checked against the manifest and copied
to --stage, outside the working tree, where it outlives the call while the machine stays warm.
Once every part of dali.tar is there, the parts are joined (`cat part-* > dali.tar`), the whole is
checked and unpacked into STAGE/dali/. Prints one JSON line: what is staged and what is ready.

    python3 bench/gpu_stage.py [--bundle .gpu-bundle] [--stage /tmp/fasthpt-bundle] [--check-only]

--check-only verifies what the bundle folder holds here and copies nothing (the dry run's step).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

from gpu_bundle import ROOT, UserError, sha256  # puts the repository root on sys.path

from fasthpt.fileio import atomic_path


def verify(path: Path, want: dict) -> None:
    if path.stat().st_size != want["bytes"] or sha256(path) != want["sha256"]:
        raise UserError(f"{path}: size or sha256 differs from the manifest (a broken transfer, or a stale file)")


def carried(bundle: Path) -> tuple[dict | None, list[Path]]:
    """The manifest the call folders here agree on, and their files (each one checked)."""
    texts = {f.read_text() for f in bundle.glob("call-*/manifest.json")}
    if not texts:
        return None, []
    if len(texts) > 1:
        raise UserError(f"the call folders in {bundle} come from different `make gpu-bundle` runs")
    manifest = json.loads(texts.pop())
    known = {e["file"]: e for e in manifest["wheels"] + manifest["parts"]}
    files = sorted(f for f in bundle.glob("call-*/*") if f.name != "manifest.json")
    for f in files:
        if f.name not in known:
            raise UserError(f"{f} is not in the bundle's manifest")
        verify(f, known[f.name])
    return manifest, files


def copy_in(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def join_dali(manifest: dict, stage: Path) -> None:
    """cat the parts into dali.tar, check it, unpack its wheels into STAGE/dali/ (all or nothing)."""
    tar, unpacked = stage / "dali.tar.tmp", stage / "dali.tmp"
    with open(tar, "wb") as out:
        for part in manifest["parts"]:
            with open(stage / "parts" / part["file"], "rb") as fh:
                shutil.copyfileobj(fh, out)
    verify(tar, manifest["dali_tar"])
    if unpacked.exists():
        shutil.rmtree(unpacked)  # this function's own leftover from an interrupted join
    with tarfile.open(tar) as tf:
        tf.extractall(unpacked, filter="data")
    for wheel in (w for w in manifest["wheels"] if w["group"] == "dali"):
        verify(unpacked / wheel["file"], wheel)
    os.replace(unpacked, stage / "dali")
    tar.unlink()


def status(manifest: dict, stage: Path) -> dict:
    base = [w["file"] for w in manifest["wheels"] if w["group"] == "base"]
    return {"base_ready": all((stage / "base" / f).is_file() for f in base),
            "dali_parts": sum((stage / "parts" / p["file"]).is_file() for p in manifest["parts"]),
            "dali_parts_total": len(manifest["parts"]), "dali_ready": (stage / "dali").is_dir()}


def stage_call(bundle: Path, stage: Path) -> dict:
    manifest, files = carried(bundle)
    if manifest is None:
        old = stage / "manifest.json"
        return {"carried": [], **(status(json.loads(old.read_text()), stage) if old.is_file() else {})}
    old = stage / "manifest.json"
    if old.is_file() and json.loads(old.read_text())["dali_tar"] != manifest["dali_tar"]:
        shutil.rmtree(stage)  # staged by this script from another bundle build: start over
    for f in files:
        copy_in(f, stage / ("parts" if f.name.startswith("dali.tar.part-") else "base") / f.name)
    copy_in(next(bundle.glob("call-*/manifest.json")), old)
    result = status(manifest, stage)
    if result["dali_parts"] == result["dali_parts_total"] and not result["dali_ready"]:
        join_dali(manifest, stage)
        result = status(manifest, stage)
    return {"carried": sorted({f.parent.name for f in files}), **result}


def check_only(bundle: Path) -> dict:
    manifest, files = carried(bundle)
    if manifest is None:
        return {"carried": [], "bundle": f"none in {bundle} (make gpu-bundle)"}
    return {"carried": sorted({f.parent.name for f in files}), "files_verified": len(files),
            "dali_parts_total": len(manifest["parts"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(ROOT / ".gpu-bundle"))
    p.add_argument("--stage", default="/tmp/fasthpt-bundle", help="where staged files outlive the call")
    p.add_argument("--check-only", action="store_true", help="verify the bundle here; copy nothing")
    args = p.parse_args(argv)
    try:
        out = check_only(Path(args.bundle)) if args.check_only else stage_call(Path(args.bundle), Path(args.stage))
    except UserError as exc:
        print(f"gpu-stage: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
