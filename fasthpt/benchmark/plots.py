"""`fasthpt bench plot`: bar charts of the benchmark JSON lines (loaders and training)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fasthpt.errors import UserError
from fasthpt.fileio import atomic_path

SKIP = "none"  # an input given as this is not plotted


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loaders", default="bench/loaders.jsonl",
                   help=f"loader benchmark JSON lines ('{SKIP}': no loader chart)")
    p.add_argument("--train", default="bench/train.jsonl",
                   help=f"training benchmark JSON lines ('{SKIP}': no training chart)")
    p.add_argument("--out", default="bench", help="folder for loaders.png and train.png")


def read_rows(path: str | Path, flag: str = "input", keys: tuple = ()) -> list[dict]:
    """The JSON rows of one input, each holding ``keys``; a missing, unreadable or empty file is a
    UserError naming ``flag`` (a chart silently left out would look like a successful run)."""
    path = Path(path)
    if str(path) == SKIP:
        return []
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file (run `fasthpt bench {flag[2:]} --json {path}`, "
                        f"or pass {flag} {SKIP})")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{flag} {path} cannot be read ({exc.__class__.__name__}: {exc})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path}:{n} is not a JSON line") from None
            missing = [k for k in keys if not isinstance(rows[-1], dict) or k not in rows[-1]]
            if missing:
                raise UserError(f"{path}:{n} is not a {flag[2:]} benchmark row (no {missing[0]!r})")
    if not rows:
        raise UserError(f"{flag} {path} is empty: it holds no benchmark rows")
    return rows


def latest(rows: list[dict], key) -> list[dict]:
    """The last row for each key(row): later measurements replace earlier ones."""
    seen: dict = {}
    for r in rows:
        seen[key(r)] = r
    return list(seen.values())


def _bar(ax, labels, values, title, xlabel, log=True):
    ax.barh(range(len(values)), values, color="tab:blue")
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.invert_yaxis()
    if log:  # loaders span decades (decode vs torch); training rates do not
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels overlap on short ranges
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=7)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."))  # the temporary name ends in .tmp, not the format


def plot_loaders(rows: list[dict], path: Path) -> bool:
    rows = [r for r in latest(rows, lambda r: (r["backend"], r["res"], r.get("device")))
            if r.get("samples_per_s") and not r.get("skipped")]
    if not rows:
        return False
    import matplotlib.pyplot as plt

    resolutions = sorted({r["res"] for r in rows})
    fig, axes = plt.subplots(1, len(resolutions), figsize=(5 * len(resolutions), 3), dpi=110, squeeze=False)
    for ax, res in zip(axes[0], resolutions):
        sel = sorted((r for r in rows if r["res"] == res), key=lambda r: -r["samples_per_s"])
        _bar(ax, [f"{r['backend']} ({r.get('device', '?')})" for r in sel], [r["samples_per_s"] for r in sel],
             f"two-view loading, {res} px", "samples/s (decode: images/s), log scale")
    _save(fig, path)
    plt.close(fig)
    return True


def plot_train(rows: list[dict], path: Path) -> bool:
    rows = [r for r in latest(rows, lambda r: (r["backend"], tuple(r["algorithms"]), r["res"], r.get("device")))
            if r.get("samples_per_s")]
    if not rows:
        return False
    import matplotlib.pyplot as plt

    rows.sort(key=lambda r: -r["samples_per_s"])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2), dpi=110)
    labels = [f"{r['backend']} | {'+'.join(r['algorithms'])} | {r['res']}px | "
              f"stall {100 * r.get('data_stall_frac', 0):.0f}%" for r in rows]
    _bar(ax, labels, [r["samples_per_s"] for r in rows], "MoCo-v2 training throughput", "samples/s", log=False)
    _save(fig, path)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> int:
    loaders = read_rows(args.loaders, "--loaders", ("backend", "res"))
    train = read_rows(args.train, "--train", ("backend", "algorithms", "res"))
    import matplotlib

    matplotlib.use("Agg")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    if plot_loaders(loaders, out / "loaders.png"):
        made.append(str(out / "loaders.png"))
    if plot_train(train, out / "train.png"):
        made.append(str(out / "train.png"))
    if not made:
        raise UserError(f"no measured rows in {args.loaders} or {args.train} (all skipped): nothing to plot")
    print("wrote " + ", ".join(made))
    return 0
