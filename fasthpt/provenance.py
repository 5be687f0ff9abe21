"""Where a backbone came from, and what it expects as input: shared by `fasthpt export` and `embed`.

A source is a run folder (runs/<name>/ with backbone.pt, config.yaml, metrics.jsonl; with stages,
one sub-folder per stage) or any backbone spec the evaluators accept (a checkpoint file,
``torchvision:NAME``, ``random``). From a run it reads the base, the data, the resolution and the
iterations trained; files in the run folder are data (YAML parsed with ``safe_load``, JSON lines
skipped when malformed), never code.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fasthpt.errors import UserError
from fasthpt.fileio import atomic_path, json_text
from fasthpt.manifest import MANIFEST, load_manifest

BACKBONE, CONFIG, METRICS = "backbone.pt", "config.yaml", "metrics.jsonl"
# The input contract of every export and embedding: the eval transform of the loaders
# (fasthpt.data.build_eval_loader: resize the shorter side to round(res*256/224), center crop res).
PREPROCESS = ("RGB; resize the shorter side to round(res * 256 / 224) (bilinear, antialiased), "
              "center-crop res x res; subtract mean, divide by std (per channel)")


@dataclass
class Source:
    backbone: object  # fasthpt.eval.common.Backbone (module, source, sha256 fingerprint, arch)
    run: dict | None  # read_run() of the run folder, None for a bare checkpoint


@dataclass
class Norm:
    mean: list[float]  # per RGB channel, in 0..255 pixel units (the manifest's units)
    std: list[float]
    origin: str  # the manifest it came from, or "--mean/--std"

    def record(self) -> dict:
        return {"mean": self.mean, "std": self.std, "units": "0..255 pixel values",
                "mean_0_1": [m / 255 for m in self.mean], "std_0_1": [s / 255 for s in self.std],
                "from": self.origin}


def say(command: str, message: str) -> None:
    """One progress line on stderr (stdout stays for the result)."""
    print(f"{command}: {message}", file=sys.stderr, flush=True)


def resolve_source(spec: str, *, arch: str | None = None, trust: bool = False) -> Source:
    """A run folder (its backbone.pt) or a backbone spec, loaded through the evaluators' loader.

    Missing file, a folder without backbone.pt, or a checkpoint of another architecture than
    ``arch``: UserError (one line)."""
    from fasthpt.eval.common import resolve_backbone

    path = Path(spec)
    run = None
    if path.is_dir():
        if not (path / BACKBONE).is_file():
            what = "the run has not finished" if (path / CONFIG).is_file() else "not a fasthpt run folder"
            raise UserError(f"{path} has no {BACKBONE} ({what}); give a run folder or a checkpoint file")
        run, spec = read_run(path), str(path / BACKBONE)
    backbone = resolve_backbone(spec, arch, trust=trust)
    return Source(backbone, run)


def read_run(root: Path) -> dict:
    """The facts of a run folder that an export records (missing ones are None)."""
    cfg = _yaml(root / CONFIG)
    section = lambda key: cfg.get(key) if isinstance(cfg.get(key), dict) else {}  # noqa: E731
    data, hpt, model, train = section("data"), section("hpt"), section("model"), section("train")
    steps = _jsonl(root / METRICS)
    knn = [row for row in steps if "knn/acc" in row]
    info = {
        "run": str(root), "name": cfg.get("name"), "arch": model.get("arch"), "base": hpt.get("base"),
        "mode": hpt.get("mode"), "data": data.get("path"), "res": data.get("res"),
        "max_duration": train.get("max_duration"),
        "iterations": steps[-1].get("step") if steps else None,  # the last logged batch (Composer's step)
        "knn_monitor": {"step": knn[-1].get("step"), "acc": knn[-1]["knn/acc"]} if knn else None,
    }
    stages = [s for s in cfg.get("stages") or [] if isinstance(s, dict) and s.get("name")]
    if stages:  # runs/<name>/<stage>/ each hold a run of their own (fasthpt.hpt.stage_configs)
        info["stages"] = [read_run(root / str(s["name"])) for s in stages]
        info["data"] = info["stages"][-1]["data"]
        counts = [s["iterations"] for s in info["stages"]]
        info["iterations"] = sum(counts) if None not in counts else None
    return info


def _yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return cfg if isinstance(cfg, dict) else {}


def _jsonl(path: Path) -> list[dict]:
    """JSON-object lines of ``path`` ([] when absent); other lines (a torn last line) are skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def protocol_results(source: Source, files=()) -> list[dict]:
    """`fasthpt eval --json` records of this very backbone (same sha256), from ``files`` and from
    the run folder's other *.jsonl files."""
    found = [Path(f) for f in files]
    for f in found:
        if not f.is_file():
            raise UserError(f"--results {f}: no such file")
    if source.run is not None:
        found += sorted(p for p in Path(source.run["run"]).glob("*.jsonl") if p.name != METRICS)
    fingerprint = source.backbone.fingerprint
    return [row for f in found for row in _jsonl(f)
            if "protocol" in row and row.get("backbone_fingerprint") == fingerprint]


def resolve_norm(run: dict | None, norm_data=None, mean=None, std=None) -> Norm:
    """--mean/--std, else the manifest of --norm-data, else of the run's training data."""
    if mean is not None or std is not None:
        if norm_data:
            raise UserError("give --norm-data or --mean/--std, not both")
        return Norm(_triple("--mean", mean, 0), _triple("--std", std, 1e-6), "--mean/--std")
    data = norm_data or (run or {}).get("data")
    if not data:
        raise UserError("normalisation unknown for a bare checkpoint: pass --norm-data DIR (the `fasthpt prep` "
                        "folder it was trained on) or --mean R,G,B --std R,G,B (0..255 units)")
    try:
        manifest = load_manifest(data)
    except UserError as exc:
        if norm_data:
            raise
        raise UserError(f"{exc} (the run's training data, for its mean/std); pass --norm-data DIR") from None
    return Norm(manifest.mean, manifest.std, str(Path(data) / MANIFEST))


def _triple(flag: str, text, low: float) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or any(not low <= v <= 255 for v in values):
        raise UserError(f"{flag} {text}: give three comma-separated values in {low:g}..255 (0..255 pixel units; "
                        "--mean and --std go together)")
    return values


def resolve_res(run: dict | None, res: int | None) -> int:
    """--res, else the run's training resolution."""
    if res is None:
        res = (run or {}).get("res")
    if res is None:
        raise UserError("input resolution unknown for a bare checkpoint: pass --res N (the side it was trained at)")
    from fasthpt.eval.common import check_res

    return check_res(res)


def record(source: Source, norm: Norm, res: int, results=()) -> dict:
    """The provenance block every export and embedding carries."""
    from fasthpt import __version__
    from fasthpt.data.common import eval_resize

    bb = source.backbone
    return {
        "backbone": bb.source, "backbone_sha256": bb.fingerprint, "arch": bb.arch,
        "num_features": bb.num_features, "run": source.run, "results": protocol_results(source, results),
        "res": res, "resize": eval_resize(res), "preprocess": PREPROCESS, "normalisation": norm.record(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "fasthpt": __version__,
    }


def check_out(out: Path, suffixes: tuple[str, ...], force: bool, protect: Path | None = None) -> Path:
    """A writable output path with one of ``suffixes``; an existing file is replaced only with --force."""
    out = Path(out)
    if out.suffix.lower() not in suffixes:
        raise UserError(f"--out {out}: must end with {' or '.join(suffixes)}")
    if protect is not None and out.resolve() == Path(protect).resolve():
        raise UserError(f"--out {out} is the source checkpoint itself; choose another file")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name")
    for path in (out, sidecar(out)):
        if path.exists() and not force:
            raise UserError(f"{path} exists; pass --force to replace it")
    return out


def sidecar(out: Path) -> Path:
    """FILE.onnx -> FILE.json: the record that goes with an output file."""
    return Path(out).with_suffix(".json")


@contextmanager
def atomic_outputs(out: Path) -> Iterator[tuple[Path, Path]]:
    """Temporary names for ``out`` and its record (fasthpt.fileio.atomic_path): both appear when the
    block succeeds, neither when it fails."""
    with atomic_path(out) as tmp, atomic_path(sidecar(out)) as tmp_record:
        yield tmp, tmp_record


def write_record(path: Path, record: dict) -> None:
    Path(path).write_text(json_text(record))
