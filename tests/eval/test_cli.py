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
    assert record["options"]["k"] == [5] and record["k"] == 5 and record["t"] in record["options"]["t"]
    assert record["top1"] == pytest.approx(printed_top1, abs=1e-4)


def test_cli_seeds_write_one_line_each_and_a_summary(capsys, tiny_data, tmp_path):
    out = tmp_path / "results.jsonl"
    code = main(["eval", "linear", "--backbone", "random", "--arch", "resnet_tiny", "--data", str(tiny_data),
                 "--res", "32", "--batch-size", "16", "--iters", "4", "--eval-every", "2", "--precomputed",
                 "--backend", "torch", "--workers", "0", "--no-progress", "--seeds", "2", "--json", str(out),
                 "--cache-dir", str(tmp_path / "cache")])
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(printed) == 3 and "2 seeds: top1 mean=" in printed[2] and "95% CI" in printed[2]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("summary", False) for r in records] == [False, False, True]
    # 'random' is initialised under each seed: the two runs have different backbones
    assert records[0]["backbone_fingerprint"] != records[1]["backbone_fingerprint"]
    assert records[2]["values"] == [records[0]["top1"], records[1]["top1"]]


def test_data_without_test_split_is_one_line(capsys, tiny_data, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(tiny_data, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"].pop("test")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    for protocol in ("knn", "linear", "finetune"):
        code, err = run_cli(capsys, protocol, "--backbone", "random", "--arch", "resnet_tiny", "--data", str(copy))
        assert_one_line(code, err, "no test split", "re-run `fasthpt prep")
