"""Where a backbone came from, and what it expects as input: shared by `fasthpt export` and `embed`.

A source is a run folder (runs/<name>/ with backbone.pt, config.yaml, metrics.jsonl, data.json;
with stages, one sub-folder per stage) or any backbone spec the evaluators accept (a checkpoint
file, ``torchvision:NAME``, ``random``). From a run it reads the base, the data, the resolution and
the iterations trained; files in the run folder are data (YAML parsed with ``safe_load``, JSON lines
skipped when malformed), never code.

A run remembers its data in data.json (``record_data``, written when it starts): the folder as
given and resolved to an absolute path, the manifest's sha256, the kind of data (8-bit images or
rasters: bands, stored dtype, band names) and the mean/std it trained with. An export of the run
uses that normalisation wherever it is run from, and says when the folder has changed or gone since.
From base.json it reads how the run's conv1 was made (an RGB base adapted to N bands: the rule).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fasthpt.errors import UserError
from fasthpt.fileio import atomic_path, atomic_write_json, json_text
from fasthpt.manifest import MANIFEST, SCALING, Manifest, load_manifest
from fasthpt.run_folder import CONFIG

METRICS, DATA = "metrics.jsonl", "data.json"
RGB = ["red", "green", "blue"]  # the bands of 8-bit image data (dataprep.rasters.RGB_NAMES)
# The input contract of every export and embedding: the eval transform of the loaders
# (fasthpt.data.build_eval_loader: resize the shorter side to round(res*256/224), center crop res;
# rasters: fasthpt.data.spectral.eval_view, every band alike).
RESIZE = ("resize the shorter side to round(res * 256 / 224) (bilinear, antialiased), center-crop res x res")
PREPROCESS = f"RGB; {RESIZE}; subtract mean, divide by std (per channel)"
PREPROCESS_RASTER = (f"every band, in the values as stored (the files' own, as `fasthpt prep` stored them); {RESIZE}; "
                     "subtract mean, divide by std (per band, in those units)")


@dataclass
class Source:
    backbone: object  # fasthpt.eval.common.Backbone (module, source, sha256 fingerprint, arch)
    run: dict | None  # read_run() of the run folder, None for a bare checkpoint


@dataclass
class Norm:
    """What a backbone takes: the kind of its data (8-bit images, or rasters of ``bands`` bands in
    the stored ``dtype``) and their normalisation, per band in the data's units (the manifest's:
    0..255 for 8-bit images, the stored values for rasters)."""

    mean: list[float]
    std: list[float]
    origin: str  # the manifest it came from, or "--mean/--std"
    bands: int = 3
    dtype: str = "uint8"  # the stored numpy dtype ("uint8" for 8-bit images)
    band_names: list[str] | None = field(default_factory=lambda: list(RGB))
    raster: bool = False

    @classmethod
    def of(cls, manifest: Manifest, origin: str) -> Norm:
        return cls(manifest.mean, manifest.std, origin, manifest.bands, manifest.dtype,
                   manifest.band_names if manifest.is_raster else list(RGB), manifest.is_raster)

    def many(self) -> str:
        """'8-bit RGB images', 'uint16 rasters of 13 bands' (dataprep.raster_read.Kind.many's words)."""
        plural = "s" if self.bands != 1 else ""
        return f"{self.dtype} rasters of {self.bands} band{plural}" if self.raster else "8-bit RGB images"

    @property
    def units(self) -> str:
        return f"the stored {self.dtype} values (the files' own)" if self.raster else "0..255 pixel values"

    def kind(self) -> dict:
        return {"image_format": "raster" if self.raster else "jpeg", "bands": self.bands, "dtype": self.dtype,
                "band_names": self.band_names}

    def record(self) -> dict:
        scaled = {} if self.raster else {"mean_0_1": [m / 255 for m in self.mean],
                                         "std_0_1": [s / 255 for s in self.std]}
        return {"mean": self.mean, "std": self.std, "units": self.units, **scaled, "scaling": SCALING,
                "from": self.origin, **self.kind()}


def say(command: str, message: str) -> None:
    """One progress line on stderr (stdout stays for the result)."""
    print(f"{command}: {message}", file=sys.stderr, flush=True)


def resolve_source(spec: str, *, arch: str | None = None, trust: bool = False, allow_missing: bool = False,
                   data=None) -> Source:
    """A run folder (its backbone.pt) or a backbone spec, loaded through the evaluators' loader
    (fasthpt.eval.common.resolve_backbone: one notion of a backbone for every command); ``data``
    (a fasthpt.eval.common.Dataset): the data it will read, to whose bands conv1 is adapted as eval
    adapts it; without it the checkpoint loads as it is.

    Missing file, a folder without backbone.pt, or a checkpoint of another architecture than
    ``arch``: UserError (one line)."""
    from fasthpt.eval.common import resolve_backbone

    backbone = resolve_backbone(spec, arch, trust=trust, allow_missing=allow_missing, data=data)
    return Source(backbone, read_run(Path(spec)) if Path(spec).is_dir() else None)


def record_data(run: Path, data: str) -> None:
    """data.json: where the run's data was (as given and absolute) and what it looked like."""
    from fasthpt.eval.common import sha256_file

    manifest = load_manifest(data)
    atomic_write_json(Path(run) / DATA, {
        "path": str(data), "resolved": str(Path(data).resolve()), "name": manifest.name,
        "manifest_sha256": sha256_file(Path(data) / MANIFEST), **Norm.of(manifest, "").kind(),
        "mean": manifest.mean, "std": manifest.std, "classes": manifest.num_classes})


def read_run(root: Path) -> dict:
    """The facts of a run folder that an export records (missing ones are None)."""
    from fasthpt.models.backbones import BASE_REPORT

    cfg = _yaml(root / CONFIG)
    section = lambda key: cfg.get(key) if isinstance(cfg.get(key), dict) else {}  # noqa: E731
    data, hpt, model, train = section("data"), section("hpt"), section("model"), section("train")
    steps = _jsonl(root / METRICS)
    knn = [row for row in steps if "knn/acc" in row]
    recorded = _json(root / DATA)
    info = {
        "run": str(root), "name": cfg.get("name"), "arch": model.get("arch"), "base": hpt.get("base"),
        "mode": hpt.get("mode"), "data": recorded.get("resolved") or data.get("path"), "data_record": recorded or None,
        "res": data.get("res"),
        "max_duration": train.get("max_duration"),
        "iterations": steps[-1].get("step") if steps else None,  # the last logged batch (Composer's step)
        "knn_monitor": {"step": knn[-1].get("step"), "acc": knn[-1]["knn/acc"]} if knn else None,
        "conv1": _conv1(_json(root / BASE_REPORT)),
    }
    stages = [s for s in cfg.get("stages") or [] if isinstance(s, dict) and s.get("name")]
    if stages:  # runs/<name>/<stage>/ each hold a run of their own (fasthpt.hpt.stage_configs)
        info["stages"] = [read_run(root / str(s["name"])) for s in stages]
        info["data"], info["data_record"] = info["stages"][-1]["data"], info["stages"][-1]["data_record"]
        counts = [s["iterations"] for s in info["stages"]]
        info["iterations"] = sum(counts) if None not in counts else None
        # the stage that adapted an RGB base to the data's bands; later stages load theirs as it is
        rules = [s["conv1"] for s in info["stages"] if s["conv1"]]
        adapted = [r for r in rules if r["rule"] not in ("as is", "random")]
        info["conv1"] = (adapted or rules or [None])[0]
    return info


def _conv1(report: dict) -> dict | None:
    """How a run's conv1 was made, from its base.json (the LoadReport): None where none was written."""
    if "conv1" not in report:
        return None
    return {"rule": report.get("conv1"), "how": report.get("conv1_how") or "", "in_chans": report.get("in_chans"),
            "base": report.get("source")}


def _yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return cfg if isinstance(cfg, dict) else {}


def _json(path: Path) -> dict:
    """The JSON object in ``path``; {} when absent or not one (a run from before data.json)."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


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


def resolve_inputs(run: dict | None, need=("res", "norm"), *, res=None, norm_data=None, mean=None,
                   std=None, bands: int = 3) -> tuple[int | None, Norm | None]:
    """(input side, normalisation) of a backbone of ``bands`` input bands: given (--res,
    --mean/--std, --norm-data), else what its run recorded; None for what is not known and not in
    ``need`` (what the output uses). All that ``need`` lacks is named in one error, each with the
    flag that gives it."""
    from fasthpt.eval.checks import check_res

    side = res if res is not None else (run or {}).get("res")
    if side is not None:
        check_res(side)
    norm, why = _norm(run, norm_data, mean, std)
    lacking = []
    if "res" in need and side is None:
        lacking.append("its input resolution (pass --res N, the side it was trained at)")
    if "norm" in need and norm is None:
        rgb = " or --mean R,G,B --std R,G,B in 0..255 units" if bands == 3 else f", for its {bands} bands"
        lacking.append(f"its normalisation ({why + ': ' if why else ''}pass --norm-data DIR, the `fasthpt prep` folder "
                       f"it was trained on{rgb})")
    if lacking:
        what = "a bare checkpoint" if run is None else f"the run {run.get('run')}"
        raise UserError(f"{what} does not say {' nor '.join(lacking)}")
    return side, norm


def check_bands(backbone, norm: Norm | None) -> None:
    """The backbone (fasthpt.eval.common.Backbone) takes as many bands as its normalisation describes."""
    if norm is not None and norm.bands != backbone.in_chans:
        raise UserError(f"{backbone.source} takes {backbone.in_chans} input bands but the normalisation from "
                        f"{norm.origin} is for {norm.many()}; give the data it was trained on (--norm-data DIR)")


def _norm(run: dict | None, norm_data, mean, std) -> tuple[Norm | None, str]:
    """(normalisation, '') from --mean/--std, --norm-data or the run; (None, why) when none says it."""
    if mean is not None or std is not None:
        if norm_data:
            raise UserError("give --norm-data or --mean/--std, not both")
        return Norm(_triple("--mean", mean, 0), _triple("--std", std, 1e-6), "--mean/--std"), ""
    if norm_data:
        return Norm.of(load_manifest(norm_data), str(Path(norm_data) / MANIFEST)), ""
    if run is None:
        return None, ""  # a bare checkpoint records nothing of its data
    if run.get("data_record"):
        return _recorded_norm(run["data_record"]), ""
    data = run.get("data")
    if not data:
        return None, "its config names no data.path"
    if not Path(data).is_absolute():  # resolved against the folder it ran in, which nothing recorded
        return None, (f"its data.path {data!r} is relative and the run (from before runs recorded their data) "
                      "does not say which folder it was run from")
    try:
        manifest = load_manifest(data)
    except UserError as exc:
        return None, f"its training data cannot be read: {exc}"
    return Norm.of(manifest, str(Path(data) / MANIFEST)), ""


def _recorded_norm(rec: dict) -> Norm:
    """The mean/std a run recorded of its data (what it trained with), and whether that folder is
    still what it was: a note when it has changed or gone, said in the record too."""
    from fasthpt.eval.common import note, sha256_file

    where = Path(str(rec.get("resolved")))
    digest = str(rec.get("manifest_sha256"))
    try:
        now = sha256_file(where / MANIFEST)
    except OSError:
        now = None
    state = ("as the run recorded it" if now == digest else "as the run recorded it; that folder is gone"
             if now is None else "as the run recorded it; that folder has changed since (another manifest)")
    try:
        mean, std = [float(v) for v in rec["mean"]], [float(v) for v in rec["std"]]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"the run's {DATA} is damaged (no mean/std); pass --norm-data DIR or --mean/--std") from None
    kind, said = _recorded_kind(rec, where if now == digest else None, len(mean))
    if now != digest:
        note(f"the run's data {where} {'is gone' if now is None else 'has changed since it trained'}; using the "
             "normalisation the run recorded")
    return Norm(mean, std, f"{where / MANIFEST} (sha256 {digest[:12]}, {state}{said})", **kind)


def _recorded_kind(rec: dict, unchanged: Path | None, bands: int) -> tuple[dict, str]:
    """(Norm's kind fields, what the origin adds) of a data.json: its own fields; from a data.json
    written before runs recorded them, the unchanged manifest's, else 8-bit RGB when it holds three
    means (data.json came before rasters), else refused."""
    if "bands" in rec:
        try:
            names = rec.get("band_names")
            return {"bands": int(rec["bands"]), "dtype": str(rec["dtype"]),
                    "band_names": None if names is None else [str(n) for n in names],
                    "raster": rec.get("image_format") == "raster"}, ""
        except (KeyError, TypeError, ValueError):
            raise UserError(f"the run's {DATA} is damaged (its bands or dtype); pass --norm-data DIR") from None
    if unchanged is not None:
        norm = Norm.of(load_manifest(unchanged), "")
        return {k: getattr(norm, k) for k in ("bands", "dtype", "band_names", "raster")}, ""
    if bands == 3:
        return {}, "; 8-bit RGB images assumed: its data.json predates the record of the data's kind"
    raise UserError(f"the run's {DATA} does not say the dtype of its {bands} bands and its data is gone or changed; "
                    "pass --norm-data DIR")


def _triple(flag: str, text, low: float) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or any(not low <= v <= 255 for v in values):
        raise UserError(f"{flag} {text}: give three comma-separated values in {low:g}..255 (0..255 pixel units; "
                        "--mean and --std go together)")
    return values


def record(source: Source, norm: Norm | None, res: int | None, results=()) -> dict:
    """The provenance block every export and embedding carries (res and normalisation None where
    the source does not say them and the output does not use them); the tensors a loaded
    checkpoint left at random init (--allow-missing) are listed."""
    from fasthpt import __version__
    from fasthpt.data.common import eval_resize

    bb = source.backbone
    kind = norm.kind() if norm else {"image_format": None, "dtype": None, "band_names": None}
    return {
        "backbone": bb.source, "backbone_sha256": bb.fingerprint, "arch": bb.arch, "missing_tensors": bb.missing,
        "num_features": bb.num_features, "run": source.run, "results": protocol_results(source, results),
        **kind, "bands": bb.in_chans, "conv1": conv1(source),
        "res": res, "resize": eval_resize(res) if res else None,
        "preprocess": PREPROCESS_RASTER if (norm.raster if norm else bb.in_chans != 3) else PREPROCESS,
        "normalisation": norm.record() if norm else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "fasthpt": __version__,
    }


def conv1(source: Source) -> dict | None:
    """How the backbone's conv1 was made: adapted here to the data's bands (embed, as eval does),
    else its run's rule (base.json), else None (a bare checkpoint says nothing of it)."""
    if source.backbone.conv1 is not None:
        rule, how = source.backbone.conv1
        return {"rule": rule, "how": how, "in_chans": source.backbone.in_chans, "base": source.backbone.source,
                "when": "adapted on loading, for the data embedded (as `fasthpt eval` adapts it)"}
    return (source.run or {}).get("conv1")


def check_out(out: Path, suffixes: tuple[str, ...], force: bool, protect: Path | None = None) -> Path:
    """A writable output path with one of ``suffixes``, checked before any work: an existing file is
    replaced only with --force, and the folder both files go to (written under a temporary name,
    then renamed) can be written or created."""
    from fasthpt.eval.common import check_writable

    out = Path(out)
    if out.suffix.lower() not in suffixes:
        raise UserError(f"--out {out}: must end with {' or '.join(suffixes)}")
    for path, what in ((out, "--out"), (sidecar(out), "its record")):
        if protect is not None and path.resolve() == Path(protect).resolve():
            raise UserError(f"{what} {path} is the source checkpoint itself; choose another --out")
        if path.is_dir():
            raise UserError(f"{what} {path} is a folder; give another --out file name")
        if path.exists() and not force:
            raise UserError(f"{path} exists; pass --force to replace it")
    check_writable(out.parent, f"--out {out}: its folder", folder=True)
    return out


def sidecar(out: Path) -> Path:
    """FILE.onnx -> FILE.json: the record that goes with an output file."""
    return Path(out).with_suffix(".json")


@contextmanager
def atomic_outputs(out: Path) -> Iterator[tuple[Path, Path]]:
    """Temporary names for ``out`` and its record (fasthpt.fileio.atomic_path): both appear when the
    block succeeds, neither when it fails. A write the file system refuses (full, read-only since
    check_out looked) is one line."""
    try:
        with atomic_path(out) as tmp, atomic_path(sidecar(out)) as tmp_record:
            yield tmp, tmp_record
    except OSError as exc:
        raise UserError(f"cannot write --out {out}: {exc.strerror or exc}; nothing was written") from None
    except RuntimeError as exc:  # torch.save's writer reports a failed write without an errno
        if "PytorchStreamWriter" not in str(exc):
            raise
        raise UserError(f"cannot write --out {out}: {str(exc).splitlines()[0]}; nothing was written") from None


def write_record(path: Path, record: dict) -> None:
    Path(path).write_text(json_text(record))
