import json

from fasthpt.cli import main


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plots_from_jsonl(tmp_path):
    _write(tmp_path / "l.jsonl", [
        {"backend": "torch", "res": 64, "device": "cpu", "samples_per_s": 10.0},
        {"backend": "torch", "res": 64, "device": "cpu", "samples_per_s": 30.0},  # later row replaces
        {"backend": "ffcv", "res": 64, "device": "cpu", "samples_per_s": 300.0},
        {"backend": "dali", "res": 64, "device": "cpu", "samples_per_s": None, "skipped": "no GPU"},
    ])
    _write(tmp_path / "t.jsonl", [{"backend": "ffcv", "algorithms": ["none"], "res": 64, "samples_per_s": 100.0,
                                   "data_stall_frac": 0.01}])
    argv = ["bench", "plot", "--loaders", str(tmp_path / "l.jsonl"), "--train", str(tmp_path / "t.jsonl"),
            "--out", str(tmp_path)]
    assert main(argv) == 0
    assert (tmp_path / "loaders.png").stat().st_size > 3000 and (tmp_path / "train.png").stat().st_size > 3000


def test_plot_with_only_skipped_rows_is_a_clear_error(tmp_path, capsys):
    _write(tmp_path / "l.jsonl", [{"backend": "dali", "res": 64, "samples_per_s": None, "skipped": "no GPU"}])
    assert main(["bench", "plot", "--loaders", str(tmp_path / "l.jsonl"), "--train", "none",
                 "--out", str(tmp_path)]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_latest_keeps_last_row():
    from fasthpt.benchmark.plots import latest

    rows = [{"k": 1, "v": 1}, {"k": 2, "v": 2}, {"k": 1, "v": 3}]
    assert sorted(r["v"] for r in latest(rows, lambda r: r["k"])) == [2, 3]
