"""A command whose output reader goes away (``botsq files list | head``) stops quietly, as the
platform stops a writer: killed by SIGPIPE, no traceback. Every console script runs through
engine/cli/common.py run_cli; each command family is run here with a real pipe whose reading end
is closed before the command writes (main ended with a BrokenPipeError traceback)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Env, bin_path
from queue_helpers import make_queue_env, proc_env

from engine.cli.common import run_cli


def _closed_pipe_run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with stdout a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                              timeout=120)
    finally:
        os.close(write_end)


def _assert_quiet_sigpipe(proc: subprocess.CompletedProcess[str], what: str) -> None:
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, f"{what}: {proc.stderr}"
    assert "Exception ignored" not in proc.stderr, f"{what}: {proc.stderr}"
    assert proc.returncode == -signal.SIGPIPE, f"{what}: exit {proc.returncode}, stderr {proc.stderr[-500:]}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, rabbit_url: str) -> Env:
    """An environment with a run, files and a schedule, on the session's RabbitMQ vhost."""
    root = tmp_path_factory.mktemp("pipe") / "env"
    env = make_queue_env(root, rabbit_url, extra="[schedule.hourly]\ncadence = hourly\n"
                                                 "job = bots-engine --new\n")
    for i in range(50):
        env.drop(f"data/in/order_{i:03d}.edi", f"ORDER {i}\n" * 20)
    done = env.run()
    assert done.returncode == 0, done.stderr
    return env


@pytest.mark.procs
@pytest.mark.parametrize("argv", [
    ["botsq", "files", "list"], ["botsq", "files", "list", "--json"], ["botsq", "runs"], ["botsq", "runs", "--json"],
    ["botsq", "schedule"], ["botsq", "queue"], ["botsq", "queue", "--json"], ["botsq", "status"],
    ["botsq", "status", "--json"], ["bots-engine"], ["bots-job2queue", "bots-engine", "--new"],
], ids=" ".join)
def test_reader_gone_stops_quietly(env: Env, rabbit_url: str, argv: list[str]) -> None:
    proc = _closed_pipe_run([bin_path(argv[0]), *argv[1:], "-c", str(env.configdir)], proc_env(env, rabbit_url),
                            env.root)
    _assert_quiet_sigpipe(proc, " ".join(argv))


@pytest.mark.procs
def test_a_long_listing_cut_by_head(env: Env, rabbit_url: str) -> None:
    """The case of the issue, through a shell: the listing is longer than head reads."""
    shell = f"{bin_path('botsq')} files list -c {env.configdir} | head -n 2; echo \"status ${{PIPESTATUS[0]}}\""
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, env=proc_env(env, rabbit_url),
                          cwd=env.root, timeout=120)
    assert len(proc.stdout.splitlines()) == 3 and proc.stdout.splitlines()[-1] in ("status 141", "status 0")
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_a_broken_socket_is_not_taken_for_a_gone_reader(capsys: pytest.CaptureFixture[str]) -> None:
    """A BrokenPipeError of a connection (broker, SMTP) while stdout is fine is an error as before,
    never a quiet stop."""
    def main() -> int:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        run_cli("botsq", main)


def test_every_console_script_runs_through_run_cli() -> None:
    """The one helper: each console script's main is run_cli(...) (read from pyproject.toml)."""
    import importlib
    import inspect
    import tomllib
    root = Path(__file__).resolve().parent.parent
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts
    for name, target in scripts.items():
        module, func = target.split(":")
        source = inspect.getsource(getattr(importlib.import_module(module), func))
        assert "run_cli(" in source, f"{name} ({target}) does not run through run_cli"
    assert sys.modules.get("engine.cli.common") is not None
