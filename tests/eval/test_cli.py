"""`fasthpt eval ...` failures are one clear line and exit status 2, never a traceback."""

import json

import pytest

from fasthpt.cli import main


def run_cli(capsys, *argv):
    code = main(["eval", *argv])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(code, err, *words):
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err, err


def test_missing_data_folder(capsys, tmp_path):
    missing = str(tmp_path / "nope")
    code, err = run_cli(capsys, "knn", "--backbone", "random", "--arch", "resnet_tiny", "--data", missing)
    assert_one_line(code, err, "data folder not found", "nope")


def test_wrong_architecture(capsys, tiny_data, tmp_path):
    from fasthpt.models.backbones import build_backbone, save_backbone

    path = save_backbone(build_backbone("resnet_tiny"), tmp_path / "backbone.pt")
    code, err = run_cli(capsys, "linear", "--backbone", str(path), "--arch", "resnet18", "--data", str(tiny_data))
    assert_one_line(code, err, "resnet_tiny", "resnet18")


def test_missing_checkpoint_and_random_without_arch(capsys, tiny_data, tmp_path):
    code, err = run_cli(capsys, "knn", "--backbone", str(tmp_path / "none.pt"), "--data", str(tiny_data))
    assert_one_line(code, err, "not found")
    code, err = run_cli(capsys, "knn", "--backbone", "random", "--data", str(tiny_data))
    assert_one_line(code, err, "--arch")


def test_too_many_labels(capsys, tiny_data):
    code, err = run_cli(capsys, "finetune", "--backbone", "random", "--arch", "resnet_tiny", "--data", str(tiny_data),
                        "--labels", "1000")
    assert_one_line(code, err, "--labels 1000", "36")


def test_cli_knn_writes_one_json_line(capsys, tiny_data, tmp_path):
    out = tmp_path / "results.jsonl"
    code = main(["eval", "knn", "--backbone", "random", "--arch", "resnet_tiny", "--data", str(tiny_data),
                 "--res", "32", "--k", "5", "--backend", "torch", "--workers", "0", "--json", str(out), "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")])
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(printed) == 1 and printed[0].startswith("knn: top1=")
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["backbone"] == "random" and record["arch"] == "resnet_tiny"
    printed_top1 = float(printed[0].split("top1=")[1].split()[0])
    assert record["options"]["k"] == 5 and record["top1"] == pytest.approx(printed_top1, abs=1e-4)
