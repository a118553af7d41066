"""ops/systemd: every unit passes ``systemd-analyze verify`` and its ExecStart runs with --help.

The units name /opt/botsq/.venv/bin/...; here that prefix is rewritten to this install's bin.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, VENV_BIN

UNIT_DIR = REPO / "ops" / "systemd"
UNITS = sorted(p.name for p in UNIT_DIR.glob("*.service"))
INSTALL_BIN = "/opt/botsq/.venv/bin"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None)
    if not found:  # install it from Debian's packages rather than skip
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "systemd"]
        if subprocess.run(install, capture_output=True, timeout=300).returncode != 0:
            # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
            subprocess.run(install, capture_output=True, timeout=300)
        found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing and could not be installed (apt-get install systemd)"
    return found


def parse_unit(text: str) -> dict[str, list[str]]:
    """key -> values (a key may repeat), sections flattened; comments dropped."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def to_minutes(span: str) -> float:
    m = re.fullmatch(r"(\d+)\s*(min|s|h)?", span)
    assert m, span
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"s": 1 / 60, "min": 1, "h": 60}[unit]


def test_all_four_services_exist() -> None:
    assert UNITS == ["botsq-beat.service", "botsq-dirmonitor.service", "botsq-flower.service",
                     "botsq-worker.service"]
    assert (UNIT_DIR / "botsq.env.example").exists()


@pytest.mark.procs
@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    tool = systemd_analyze()
    text = (UNIT_DIR / unit).read_text()
    assert INSTALL_BIN in text
    local = tmp_path / unit
    local.write_text(text.replace(INSTALL_BIN, str(VENV_BIN)))
    res = subprocess.run([tool, "verify", str(local)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (res.stdout + res.stderr).splitlines() if unit in line]
    assert res.returncode == 0 and not complaints, res.stdout + res.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_unit_restarts_on_failure_and_reads_secrets_from_an_environment_file(unit: str) -> None:
    keys = parse_unit((UNIT_DIR / unit).read_text())
    assert keys["Restart"] == ["on-failure"]
    assert keys["EnvironmentFile"] == ["/etc/botsq/botsq.env"]
    assert keys["KillSignal"] == ["SIGTERM"]
    assert not any("password" in v.lower() for v in keys.get("Environment", []) + keys["ExecStart"])


def test_worker_stop_lets_the_running_job_finish() -> None:
    keys = parse_unit((UNIT_DIR / "botsq-worker.service").read_text())
    # SIGTERM to Celery's main process only = warm shutdown; the pool child keeps its job.
    assert keys["KillMode"] == ["mixed"]
    from engine.config import Settings

    assert to_minutes(keys["TimeoutStopSec"][0]) > Settings().maxruntime


@pytest.mark.procs
@pytest.mark.parametrize("unit", UNITS)
def test_execstart_command_runs_with_help(unit: str, make_env) -> None:  # type: ignore[no-untyped-def]
    env_dir = make_env(ini="""
        [jobqueue]
        enabled = True
        broker = amqp://guest:guest@127.0.0.1:5672//
    """)
    keys = parse_unit((UNIT_DIR / unit).read_text())
    argv = shlex.split(keys["ExecStart"][0].lstrip("-@:+!"))
    argv[0] = argv[0].replace(INSTALL_BIN, str(VENV_BIN))
    assert Path(argv[0]).exists(), f"{unit}: {argv[0]} is not installed"
    env = {**os.environ}
    for assignment in keys.get("Environment", []):
        name, _, value = assignment.partition("=")
        env[name] = value
    env["BOTSQ_CONFIG"] = str(env_dir.configdir)   # the unit's /srv/botsq/config, here a temp env
    argv = [a.replace("/srv/botsq", str(env_dir.root)) for a in argv]
    res = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60, env=env,
                         cwd=env_dir.root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "usage" in (res.stdout + res.stderr).lower()


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_sigterm_to_the_worker_main_process_lets_the_running_job_finish(rabbit_url: str, tmp_path: Path) -> None:
    """What botsq-worker.service relies on: KillMode=mixed sends SIGTERM to the main process only,
    and that is Celery's warm shutdown - the running job ends normally, no new job is taken, and
    the job still waiting stays in the queue for the next worker."""
    import uuid

    from queue_helpers import Worker, ended, job2queue, make_queue_env, purge, started, wait_for

    env = make_queue_env(tmp_path / "env", rabbit_url)
    purge(env, rabbit_url)
    worker = Worker(env, rabbit_url).wait_ready()
    tag = uuid.uuid4().hex[:6]
    release = env.root / f"release-{tag}"
    try:
        assert job2queue(env, rabbit_url, "-p1", "rec", f"running-{tag}", f"@{release}").returncode == 0
        wait_for(lambda: f"running-{tag}" in started(env), 30, "the job to start", worker)
        assert job2queue(env, rabbit_url, "-p5", "rec", f"waiting-{tag}").returncode == 0
        worker.proc.send_signal(signal.SIGTERM)            # the main process only, as KillMode=mixed
        time.sleep(1.0)
        assert worker.alive(), "the worker left before its job ended"
        release.write_text("go")
        worker.proc.wait(30)
        assert worker.proc.returncode == 0, worker.output()[-3000:]
        assert f"running-{tag}" in ended(env)
        assert f"waiting-{tag}" not in started(env)
        assert "Warm shutdown" in worker.output()
    finally:
        release.write_text("go")
        worker.stop()
    # the waiting job was not lost: the next worker runs it
    worker = Worker(env, rabbit_url).wait_ready()
    try:
        wait_for(lambda: f"waiting-{tag}" in ended(env), 30, "the waiting job after the restart", worker)
    finally:
        worker.stop()
