import json

from fasthpt.cli import main as cli_main


def test_bench_train_synthetic_writes_one_row_per_algorithm_set(tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    code = cli_main(["bench", "train", "--data", "synthetic", "--algorithms", "none;channels_last",
                     "--res", "32", "--batch", "8", "--queue", "64", "--warmup", "1", "--batches", "2",
                     "--workers", "0", "--json", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["algorithms"] for r in rows] == [["none"], ["channels_last"]]
    for r in rows:
        assert r["backend"] == "synthetic" and r["samples_per_s"] > 0 and r["step_s"] > 0
        assert abs(r["samples_per_s"] * r["step_s"] - 8) < 0.5  # one figure is the other's inverse
        assert r["git_sha"] and r["device"].startswith("cpu")


def test_bench_train_on_data_reports_stall_and_knn(tmp_path, ssl_data):
    out = tmp_path / "train.jsonl"
    code = cli_main(["bench", "train", "--data", str(ssl_data), "--backends", "torch", "--res", "32",
                     "--batch", "8", "--queue", "64", "--warmup", "1", "--batches", "2", "--workers", "0",
                     "--knn", "--json", str(out)])
    assert code == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["backend"] == "torch" and 0 <= row["data_stall_frac"] <= 1 and 0 <= row["knn_acc"] <= 1


def test_bench_train_reference_row_and_ratios(tmp_path):
    """--reference: a supervised step of the same backbone first, then each MoCo row's ratio to it."""
    out = tmp_path / "train.jsonl"
    code = cli_main(["bench", "train", "--data", "synthetic", "--algorithms", "channels_last", "--reference",
                     "--res", "32", "--batch", "8", "--queue", "64", "--warmup", "1", "--batches", "2",
                     "--workers", "0", "--json", str(out)])
    assert code == 0
    ref, moco = [json.loads(line) for line in out.read_text().splitlines()]
    assert ref["backend"] == "reference" and "supervised resnet_tiny" in ref["what"] and ref["samples_per_s"] > 0
    assert "vs_reference" not in ref
    assert moco["backend"] == "synthetic"
    assert moco["vs_reference"] == round(moco["samples_per_s"] / ref["samples_per_s"], 3)
