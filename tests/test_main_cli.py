import subprocess
import sys

from fasthpt.cli import COMMANDS, main


def test_help_lists_the_five_subcommands(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in ("prep", "pretrain", "eval", "bench", "demo"):
        assert name in out
    assert set(COMMANDS) == {"prep", "pretrain", "eval", "bench", "demo"}


def test_console_script_help_runs():
    proc = subprocess.run([sys.executable, "-m", "fasthpt.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "pretrain" in proc.stdout


def test_unknown_subcommand_is_an_error():
    proc = subprocess.run([sys.executable, "-m", "fasthpt.cli", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
