"""`fasthpt pretrain` against the faults of a run folder: refused up front with one line (bad
values, YAML syntax, a file in the way, a read-only disk, another run's config, a second launch,
no readable checkpoint), and surviving a truncated checkpoint, a failed checkpoint write, a resume
(metrics rows not repeated) and Ctrl-C (exit 130, saying where the run resumes)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fasthpt.cli import main as cli_main
from fasthpt.config import save_config
from fasthpt.errors import UserError
from fasthpt.run_folder import RunLock, check_same_config
from fasthpt.train import pretrain

REPO = Path(__file__).resolve().parents[2]
RUN = ("train.max_duration=4ba", "train.save_interval=2ba", "train.console_log=false")  # stderr: errors only


def _one_line_error(capsys, *args) -> str:
    code = cli_main(["pretrain", *map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("override, needle", [
    ("optim.lr=0", "config key 'optim.lr' is 0.0; valid: > 0"),
    ("model.queue_size=0", "config key 'model.queue_size' is 0; valid: >= 1"),
    ("train.max_duration=0ba", "config key 'train.max_duration' is '0ba'; valid: >= 1 batch"),
    ("model.queue_size=4", "valid: >= the global batch 8 (data.batch_size 8 x 1 process)"),
])
def test_bad_values_refused_before_any_work(tmp_path, tiny_yaml, capsys, override, needle):
    assert needle in _one_line_error(capsys, tiny_yaml("cli"), override)
    assert not (tmp_path / "cli").exists()


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel:\n  arch: [resnet18\n  dim: 16\n")
    line = _one_line_error(capsys, bad)
    assert line.startswith(f"fasthpt pretrain: error: {bad}:4:") and "YAML syntax error" in line


@pytest.mark.parametrize("in_the_way", ["name", "run_dir"])
def test_run_folder_that_is_a_file_is_refused(tmp_path, tiny_yaml, capsys, in_the_way):
    blocker = tmp_path / "cli" if in_the_way == "name" else tmp_path / "runs"
    blocker.write_text("not a folder")
    extra = [f"run_dir={tmp_path / 'runs'}"] if in_the_way == "run_dir" else []
    assert f"{blocker} is a file, not a folder" in _one_line_error(capsys, tiny_yaml("cli"), *extra)
    assert blocker.read_text() == "not a folder"


def test_read_only_disk_is_refused(tmp_path, tiny_yaml, capsys, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):  # what creating the probe file raises on a read-only mount
        raise OSError(errno.EROFS, "Read-only file system")

    cfg = tiny_yaml("cli")
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    line = _one_line_error(capsys, cfg)
    assert f"cannot write in {tmp_path} (Read-only file system)" in line
    assert not (tmp_path / "cli").exists()


def test_relaunch_with_another_config_names_the_keys(tmp_path, tiny_run, tiny_yaml, capsys):
    saved = tmp_path / "cli" / "config.yaml"
    save_config(tiny_run("cli", "model.dim=32", "optim.lr=0.1"), saved)
    before = saved.read_text()
    line = _one_line_error(capsys, tiny_yaml("cli"))
    assert f"{tmp_path / 'cli'} holds a run with another config (model.dim 32 -> 16; optim.lr 0.1 -> 0.03)" in line
    assert "another name=" in line and saved.read_text() == before


def test_relaunch_may_change_how_a_run_is_executed_and_reported(tmp_path, tiny_run):
    saved = tmp_path / "r" / "config.yaml"
    save_config(tiny_run("r"), saved)
    same_run = tiny_run("r", "train.progress_bar=true", "train.log_interval=5ba", "data.workers=1",
                        "train.knn_interval=2ba", "train.save_interval=3ba")
    check_same_config(same_run, saved)  # no error
    with pytest.raises(UserError, match="train.max_duration"):
        check_same_config(tiny_run("r", "train.max_duration=7000ba"), saved)


def _hold_lock(run: Path) -> subprocess.Popen:
    """Another process holding the run's lock until its stdin closes."""
    code = ("import sys; from pathlib import Path; from fasthpt.run_folder import RunLock; "
            "lock = RunLock(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_launch_of_a_run_is_refused_naming_the_pid(tmp_path, tiny_yaml, capsys):
    holder = _hold_lock(tmp_path / "cli")
    try:
        line = _one_line_error(capsys, tiny_yaml("cli"))
    finally:
        holder.stdin.close()
        holder.wait(timeout=120)
    assert f"{tmp_path / 'cli'} is in use by another launch (pid {holder.pid} on " in line
    RunLock(tmp_path / "cli").release()  # the holder's exit freed it


def test_lock_of_a_refused_launch_leaves_no_folder(tmp_path):
    first = RunLock(tmp_path / "runs" / "r")
    with pytest.raises(UserError, match=f"pid {os.getpid()} on "):
        RunLock(tmp_path / "runs" / "r")
    first.release()
    assert not (tmp_path / "runs").exists()  # it made runs/ and runs/r and wrote nothing else


def test_rank_zero_refusal_is_raised_on_the_other_ranks(monkeypatch):
    from composer.utils import dist

    from fasthpt.run_folder import on_rank_zero

    def rank_zero_said(objects, src=0):  # what rank 0's broadcast hands rank 1
        objects[0] = "runs/r is in use by another launch (pid 1 on a)"

    monkeypatch.setattr(dist, "get_global_rank", lambda: 1)
    monkeypatch.setattr(dist, "broadcast_object_list", rank_zero_said)
    touched = []
    with pytest.raises(UserError, match="in use by another launch"):
        on_rank_zero(touched.append, "run folder")
    assert touched == []  # only rank 0 touches the run folder


def test_no_readable_checkpoint_is_one_line_naming_the_folder(tmp_path, tiny_yaml, capsys):
    folder = tmp_path / "cli" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "ep0-ba2-rank0.pt").write_bytes(b"PK\x03\x04 cut short")
    line = _one_line_error(capsys, tiny_yaml("cli"))
    assert f"no checkpoint in {folder} can be read (1 found, cut short?)" in line


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_run, caplog):
    cfg = tiny_run("r", *RUN)
    pretrain(cfg)
    latest = tmp_path / "r" / "checkpoints" / "ep0-ba4-rank0.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    caplog.set_level("INFO", logger="fasthpt")
    result = pretrain(cfg)
    assert result["iterations"] == 4 and result["iterations_this_launch"] == 2
    assert "ep0-ba4-rank0.pt cannot be read" in caplog.text and "(batch 2)" in caplog.text
    assert latest.with_name("ep0-ba4-rank0.pt.unreadable").is_file()
    steps = _steps(tmp_path / "r")
    assert steps == sorted(set(steps)) and set(range(4)) <= set(steps)  # no row repeated, none missing


def test_failed_checkpoint_write_is_one_line_and_never_resumed_from(tmp_path, tiny_run, tiny_yaml, capsys,
                                                                     monkeypatch):
    import composer.utils.checkpoint as composer_checkpoint

    write = composer_checkpoint._write_checkpoint_file

    def disk_full_at_batch_4(state_dict, filename):
        if "ba4" not in filename:
            return write(state_dict, filename)
        Path(filename).write_bytes(b"PK\x03\x04" + b"\0" * 100)  # what a short write leaves behind
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    monkeypatch.setattr(composer_checkpoint, "_write_checkpoint_file", disk_full_at_batch_4)
    line = _one_line_error(capsys, tiny_yaml("r", *RUN))
    ckpt = tmp_path / "r" / "checkpoints"
    assert f"writing into {tmp_path / 'r'} failed: torch.save could not finish writing a checkpoint" in line
    assert f"resume from {ckpt / 'ep0-ba2-rank0.pt'} (batch 2)" in line
    monkeypatch.setattr(composer_checkpoint, "_write_checkpoint_file", write)
    result = pretrain(tiny_run("r", *RUN))
    assert result["iterations"] == 4 and result["iterations_this_launch"] == 2
    assert (ckpt / "ep0-ba4-rank0.pt.unreadable").is_file()


@pytest.mark.parametrize("stop_on_call, said, how", [
    (4, "interrupted at batch 3; relaunch the same command to resume from {ckpt} (batch 2)", "raise"),
    (1, "interrupted at batch 0; no checkpoint yet: a relaunch starts over", "raise"),
    # the real signals: importing Composer makes them sys.exit(128 + signum), not KeyboardInterrupt
    (4, "interrupted at batch 3; relaunch the same command to resume from {ckpt} (batch 2)", signal.SIGINT),
    (4, "interrupted at batch 3; relaunch the same command to resume from {ckpt} (batch 2)", signal.SIGTERM),
])
def test_ctrl_c_exits_130_saying_where_the_run_resumes(tmp_path, tiny_run, tiny_yaml, capsys, monkeypatch,
                                                       stop_on_call, said, how):
    import composer.core.engine  # noqa: F401 (installs Composer's SIGINT/SIGTERM handlers, as a run does)

    from fasthpt.models.moco import ComposerMoCo

    original, calls = ComposerMoCo.forward, {"n": 0}
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    assert handlers[signal.SIGTERM] is composer.core.engine.sigterm_handler  # never the default: it kills

    def ctrl_c(self, batch):
        calls["n"] += 1
        if calls["n"] == stop_on_call:
            if how == "raise":
                raise KeyboardInterrupt
            os.kill(os.getpid(), how)
        return original(self, batch)

    monkeypatch.setattr(ComposerMoCo, "forward", ctrl_c)
    overrides = (*RUN, "train.knn_interval=2ba")
    try:
        code = cli_main(["pretrain", str(tiny_yaml("r", *overrides))])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    err = capsys.readouterr().err.strip().splitlines()
    ckpt = tmp_path / "r" / "checkpoints" / "ep0-ba2-rank0.pt"
    assert code == (143 if how == signal.SIGTERM else 130) and err == [f"fasthpt pretrain: {said.format(ckpt=ckpt)}"]
    monkeypatch.setattr(ComposerMoCo, "forward", original)
    result = pretrain(tiny_run("r", *overrides))
    assert result["iterations"] == 4
    # the batches redone after the resume do not repeat their rows; the kNN figure of batch 2,
    # measured before the checkpoint, stays in its row
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and set(range(4)) <= set(steps)
    assert "knn/acc" in rows[2] and "loss/train/total" in rows[2]


@pytest.mark.slow
def test_two_process_launch_of_a_locked_run_refuses_on_every_rank(tmp_path, tiny_yaml):
    cfg = tiny_yaml("ddp", "train.max_duration=2ba")
    lock = RunLock(tmp_path / "ddp")
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "composer.cli.launcher", "-n", "2", str(REPO / "fasthpt" / "train.py"), str(cfg)]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    finally:
        lock.release()
    out = proc.stdout + proc.stderr
    # every rank refuses (none waits for rank 0 until the timeout); which exit code the launcher
    # reports depends on which rank it sees first (the other may be stopped by its SIGTERM)
    assert proc.returncode != 0 and out.count(f"is in use by another launch (pid {os.getpid()} on ") >= 1, out[-3000:]
