import subprocess
import sys

import pytest

from fasthpt.cli import COMMANDS, main


def test_help_lists_every_subcommand(capsys):
    names = ("prep", "pretrain", "eval", "bench", "demo", "export", "embed")
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in names:
        assert name in out
    assert set(COMMANDS) == set(names)


def test_console_script_help_runs():
    proc = subprocess.run([sys.executable, "-m", "fasthpt.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "pretrain" in proc.stdout


def test_unknown_subcommand_is_an_error():
    proc = subprocess.run([sys.executable, "-m", "fasthpt.cli", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_ctrl_c_exits_130_with_the_run_s_own_line(monkeypatch, capsys):
    import fasthpt.pretrain
    from fasthpt.run_folder import Interrupted

    def stopped(args):
        raise Interrupted("interrupted at batch 7; relaunch the same command to resume from x.pt (batch 6)")

    monkeypatch.setattr(fasthpt.pretrain, "run", stopped)
    assert main(["pretrain", "c.yaml"]) == 130
    assert capsys.readouterr().err.splitlines() == [
        "fasthpt pretrain: interrupted at batch 7; relaunch the same command to resume from x.pt (batch 6)"]

    def plain(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(fasthpt.pretrain, "run", plain)
    assert main(["pretrain", "c.yaml"]) == 130
    assert capsys.readouterr().err.splitlines() == ["fasthpt pretrain: interrupted"]


@pytest.mark.parametrize("code, said", [(130, True), (143, True), (3, False)])
def test_composer_s_signal_exit_is_an_interruption_in_every_command(monkeypatch, capsys, code, said):
    """After Composer is imported, Ctrl-C / SIGTERM arrive as sys.exit(128 + signum) in any command."""
    import fasthpt.export

    def stopped(args):
        sys.exit(code)

    monkeypatch.setattr(fasthpt.export, "run", stopped)
    argv = ["export", "runs/x", "--to", "onnx"]
    if said:
        assert main(argv) == code
        assert capsys.readouterr().err.splitlines() == ["fasthpt export: interrupted"]
    else:
        with pytest.raises(SystemExit):
            main(argv)
