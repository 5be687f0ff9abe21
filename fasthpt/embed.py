"""`fasthpt embed --backbone B (--images DIR | --data DIR) --out FILE.npy|FILE.parquet`.

Pooled features of every image (L2-normalised with --l2), in batches, on the CPU or a GPU (bf16
autocast there, as in the evaluators), through the eval transform of the loaders: resize the
shorter side to round(res * 256/224), center-crop res (every band of a raster).

- ``--data DIR`` (a `fasthpt prep` folder): the eval loaders themselves, over the chosen splits,
  normalised with that dataset's mean/std (as `fasthpt eval` does); paths are the source files
  prep recorded (samples/<split>.jsonl).
- ``--images DIR``: any folder (recursive; class folders give labels, else -1), decoded as prep
  decodes, normalised with the backbone's training data (the run's data.json) or --norm-data /
  --mean/--std (8-bit RGB only). Rasters (TIFF / GeoTIFF, 16-bit PNG, .npy of 12/16-bit, float
  or N bands) are read as they are and standardised per band in their stored units, as the
  loaders do (fasthpt.image_folder); a file of another kind than the backbone's data (band count,
  dtype, 8-bit against rasters) is skipped and listed, as unusable files are, never converted.

The backbone takes its data's bands: with --data or --norm-data, a backbone whose conv1 takes
another band count is adapted by pretraining's rule, as `fasthpt eval` adapts it (a note says so,
the record's ``conv1`` too); a run's backbone and its data.json agree; otherwise a mismatch is
refused in one line.

FILE.npy holds float32 N x D; FILE.parquet (needs pyarrow) columns path, label, [split], feature.
Beside it, FILE.json: paths, labels, classes, skipped files, resolution, the input (kind of data:
bands, stored dtype, band names), normalisation, conv1's rule and the backbone's provenance. Both
are written to temporary names and renamed into place.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fasthpt import provenance as pv
from fasthpt.config import ARCH_NAMES
from fasthpt.data import BACKEND_CHOICES
from fasthpt.errors import UserError
from fasthpt.manifest import MANIFEST

SHOW_SKIPPED = 10  # as many as `fasthpt prep` prints


@dataclass
class Rows:
    features: torch.Tensor  # N x D float32
    paths: list[str]
    labels: list[int]
    classes: list[str]
    norm: pv.Norm
    origin: dict  # what was embedded
    splits: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def embed(backbone: str, out, *, images=None, data=None, splits=None, res=None, arch=None, l2=False,
          norm_data=None, mean=None, std=None, batch_size=256, workers=2, device="auto", backend="auto",
          force=False, trust=False, progress=True) -> dict:
    """Embed ``images`` or ``data`` with ``backbone``; write ``out`` and its record; return the record."""
    from fasthpt.eval.checks import check_features
    from fasthpt.eval.common import autocast, module_device, place, resolve_data

    if (images is None) == (data is None):
        raise UserError("give exactly one of --images DIR or --data DIR")
    if data is not None and (norm_data or mean or std):
        raise UserError("--data is normalised with its own manifest's mean/std; --norm-data, --mean and --std "
                        "apply to --images")
    if batch_size < 1 or workers < 0:
        raise UserError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
    out = pv.check_out(Path(out), (".npy", ".parquet"), force)
    if out.suffix.lower() == ".parquet":
        _pyarrow()  # before any work
    # the data read (--data) or whose normalisation is used (--norm-data): the backbone is read for its bands
    ds = resolve_data(data if data is not None else norm_data) if (data or norm_data) else None
    source = pv.resolve_source(backbone, arch=arch, trust=trust, data=ds)
    # --data is normalised with its own manifest: only --images needs the backbone's normalisation
    res, norm = pv.resolve_inputs(source.run, ("res", "norm") if images is not None else ("res",), res=res,
                                  norm_data=norm_data, mean=mean, std=std, bands=source.backbone.in_chans)
    if images is not None:
        pv.check_bands(source.backbone, norm)
    dev = module_device(source.backbone, device)
    module = place(source.backbone, dev)
    opts = dict(res=res, batch_size=batch_size, workers=workers, device=dev, progress=progress)
    with autocast(dev):
        if images is not None:
            rows = _images(module, images, norm, **opts)
        else:
            rows = _data(module, ds, splits, backend=backend, **opts)
    check_features(rows.features, source.backbone.source, "embedded")
    if l2:
        rows.features = torch.nn.functional.normalize(rows.features, dim=1)
    record = _record(rows, pv.record(source, rows.norm, res), l2=l2, device=dev)
    _write(out, rows, record)
    _report_skipped(rows.skipped, pv.sidecar(out))
    return record | {"path": str(out), "record_path": str(pv.sidecar(out))}


def _images(module, root, norm: pv.Norm, *, res, batch_size, workers, device, progress) -> Rows:
    from dataprep.sources import display_name
    from fasthpt.eval.features import extract_features
    from fasthpt.image_folder import UNUSABLE, eval_loader, list_images

    source = list_images(root)
    dataset, loader = eval_loader(source, res, batch_size=batch_size, workers=workers, device=device, norm=norm)
    feats, labels = extract_features(module, loader, device=device, progress=progress, desc="embed images")
    ok = labels != UNUSABLE
    shown = lambda i: display_name(source.key(i))  # noqa: E731 - printable, JSON- and parquet-safe
    skipped = list(source.skipped) + [(shown(i), dataset.reason(i)) for i in (~ok).nonzero().flatten().tolist()]
    if not ok.any():
        first = f"{skipped[0][0]}: {skipped[0][1]}" if skipped else "none"
        raise UserError(f"--images {root}: no usable images ({len(skipped)} files skipped, e.g. {first})")
    keep = ok.nonzero().flatten().tolist()
    return Rows(feats[ok], [shown(i) for i in keep], labels[ok].tolist(), list(source.classes), norm,
                {"images": str(root), "loader": "torch eval transform over the original files"}, skipped=skipped)


def _data(module, ds, splits, *, backend, res, batch_size, workers, device, progress) -> Rows:
    from fasthpt.eval.checks import check_labels
    from fasthpt.eval.common import eval_loader
    from fasthpt.eval.features import extract_features

    data = ds.root
    names = [s for s in (splits or ds.manifest.split_names) if ds.manifest.count(s) > 0]
    feats, labels, paths, split_of, used = [], [], [], [], set()
    for split in names:
        loader = eval_loader(ds, split, res, batch_size, workers, device, backend)
        used.add(loader.backend)
        f, y = extract_features(module, loader, device=device, progress=progress, desc=f"embed {split}")
        check_labels(y, ds, split)
        feats.append(f)
        labels += y.tolist()
        paths += _sample_paths(ds.manifest, split, len(f))
        split_of += [split] * len(f)
    if not feats:
        raise UserError(f"--data {data}: the splits {', '.join(names) or '(none)'} hold no samples")
    norm = pv.Norm.of(ds.manifest, str(Path(data) / MANIFEST))
    origin = {"data": str(data), "dataset_name": ds.manifest.name, "dataset_sha256": ds.fingerprint,
              "loader": "+".join(sorted(used))}
    return Rows(torch.cat(feats), paths, labels, ds.manifest.classes, norm, origin, splits=split_of)


def _sample_paths(manifest, split: str, count: int) -> list[str]:
    """The source file of each sample (prep's samples/<split>.jsonl), else <split>/<index> (an
    output of an older prep)."""
    from dataprep.samples import read_samples
    from dataprep.sources import display_name

    try:
        names = [display_name(path) for path, _ in read_samples(manifest.root, split)]
    except UserError:
        names = []
    return names if len(names) == count else [f"{split}/{i:07d}" for i in range(count)]


def _record(rows: Rows, backbone: dict, *, l2: bool, device) -> dict:
    return {
        "count": len(rows.paths), "dim": int(rows.features.shape[1]), "dtype": "float32", "l2_normalised": l2,
        **rows.origin, "res": backbone["res"], "normalisation": backbone["normalisation"],
        # what was fed to the backbone ("dtype" above is the features')
        "input": {key: backbone[key] for key in ("image_format", "bands", "dtype", "band_names")},
        "conv1": backbone["conv1"], "preprocess": backbone["preprocess"],
        "device": device.type, "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "classes": rows.classes, "skipped_count": len(rows.skipped),
        "skipped": [{"path": p, "reason": r} for p, r in rows.skipped], "backbone": backbone,
        "paths": rows.paths, "labels": rows.labels, **({"splits": rows.splits} if rows.splits else {}),
    }


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UserError("--out *.parquet needs pyarrow: pip install pyarrow (or write .npy)") from None
    return pyarrow


def _write(out: Path, rows: Rows, record: dict) -> None:
    with pv.atomic_outputs(out) as (tmp, tmp_record):
        if out.suffix.lower() == ".npy":
            import numpy as np

            with open(tmp, "wb") as fh:  # a file object: np.save would append .npy to the temporary name
                np.save(fh, rows.features.float().numpy())
        else:
            _write_parquet(tmp, rows, record)
        pv.write_record(tmp_record, record)


def _write_parquet(path: Path, rows: Rows, record: dict) -> None:
    pa = _pyarrow()
    columns = {"path": pa.array(rows.paths, pa.string()), "label": pa.array(rows.labels, pa.int64())}
    if rows.splits:
        columns["split"] = pa.array(rows.splits, pa.string())
    flat = pa.array(rows.features.float().numpy().reshape(-1))
    columns["feature"] = pa.FixedSizeListArray.from_arrays(flat, int(rows.features.shape[1]))
    meta = {k: v for k, v in record.items() if k not in ("paths", "labels", "splits")}
    table = pa.table(columns).replace_schema_metadata({"fasthpt": json.dumps(meta, default=str)})
    pa.parquet.write_table(table, str(path))


def _report_skipped(skipped, record_path: Path) -> None:
    if not skipped:
        return
    lines = [f"skipped {len(skipped)} unusable files (all listed in {record_path}):"]
    lines += [f"  {p}: {r}" for p, r in skipped[:SHOW_SKIPPED]]
    if len(skipped) > SHOW_SKIPPED:
        lines.append(f"  ... and {len(skipped) - SHOW_SKIPPED} more")
    pv.say("embed", "\n".join(lines))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--backbone", required=True, help="a run folder (runs/<name>), a checkpoint file (torch or .safetensors), "
      "torchvision:NAME or random")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", default=None, metavar="DIR", help="any folder of images or rasters (TIFF/GeoTIFF, "
                      "16-bit PNG, .npy; recursive)")
    what.add_argument("--data", default=None, metavar="DIR", help="a `fasthpt prep` folder (holds manifest.json)")
    a("--out", required=True, metavar="FILE", help="FILE.npy (float32 N x D) or FILE.parquet; record in FILE.json")
    a("--splits", default=None, help="--data: comma-separated splits (default: all)")
    a("--l2", action="store_true", help="L2-normalise each feature vector")
    a("--res", type=int, default=None, help="eval side (default: the run's data.res; needed for a bare checkpoint)")
    a("--norm-data", default=None, metavar="DIR", help="--images: a `fasthpt prep` folder whose kind of data (bands, "
      "dtype) and per-band mean/std to use (default: the run's training data)")
    a("--mean", default=None, metavar="R,G,B", help="--images of 8-bit RGB: normalisation mean in 0..255 units (with "
      "--std); rasters: --norm-data")
    a("--std", default=None, metavar="R,G,B", help="--images of 8-bit RGB: normalisation std in 0..255 units (with "
      "--mean)")
    a("--arch", default=None, help=f"architecture ({', '.join(ARCH_NAMES)}): needed for 'random', else checked")
    a("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    a("--workers", type=int, default=2, help="loader processes (default 2; 0: in this process)")
    a("--device", default="auto", help="auto | cpu | cuda[:N] (bf16 autocast on CUDA)")
    a("--backend", default="auto", choices=BACKEND_CHOICES, help="--data: loader backend")
    a("--force", action="store_true", help="replace FILE and its record when they exist")
    a("--trust-checkpoint", action="store_true", help="allow a checkpoint that needs full unpickling "
      "(runs code from the file: only for files you trust)")
    a("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    result = embed(args.backbone, args.out, images=args.images, data=args.data, splits=splits, res=args.res,
                   arch=args.arch, l2=args.l2, norm_data=args.norm_data, mean=args.mean, std=args.std,
                   batch_size=args.batch_size, workers=args.workers, device=args.device, backend=args.backend,
                   force=args.force, trust=args.trust_checkpoint, progress=not args.no_progress)
    print(f"embed: wrote {result['count']} x {result['dim']} features to {result['path']} "
          f"and {result['record_path']} ({result['skipped_count']} skipped)")
    return 0
