"""Every command answers bad arguments with one line and exit 1 (argparse's 2 would read as
Bots' "ran, with errors"), and --help with exit 0."""
from __future__ import annotations

import subprocess

import pytest

from conftest import bin_path

COMMANDS = [["bots-engine"], ["bots-job2queue"], ["bots-jobqueueserver"], ["bots-dirmonitor"],
            ["botsq"], ["botsq", "runs"], ["botsq", "files", "list"], ["botsq", "queue"], ["botsq", "status"],
            ["botsq", "schedule"]]


@pytest.mark.procs
@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_unknown_option_is_one_line_and_exit_1(argv, tmp_path):
    r = subprocess.run([bin_path(argv[0]), *argv[1:], "--no-such-option"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and "unrecognized arguments: --no-such-option" in r.stderr
    assert r.stderr.startswith(f"{argv[0]}: error: ")


@pytest.mark.procs
@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_help_exits_0(argv, tmp_path):
    r = subprocess.run([bin_path(argv[0]), *argv[1:], "--help"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and "usage:" in r.stdout


@pytest.mark.procs
def test_unknown_botsq_subcommand(tmp_path):
    r = subprocess.run([bin_path("botsq"), "frobnicate"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 1 and "invalid choice: 'frobnicate'" in r.stderr and r.stderr.count("\n") == 1
