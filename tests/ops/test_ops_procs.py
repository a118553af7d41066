"""ops/procs.py: children started, their output prefixed, all stopped on Ctrl-C or SIGTERM."""
from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO
from ops.procs import Supervisor

PY = sys.executable


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def descendants(pid: int) -> set[int]:
    """Children, grandchildren ... of a running process."""
    out: set[int] = set()
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return out
    for k in kids:
        out |= {k} | descendants(k)
    return out


def wait_for(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@pytest.mark.procs
def test_output_is_prefixed_and_stop_terminates_each_child() -> None:
    out = io.StringIO()
    sup = Supervisor(out=out, colour=False, width=len("beta-long"))   # labels aligned from the first line
    loop = "import time,sys\nprint('ready', flush=True)\nwhile True: time.sleep(0.1)"
    a = sup.start("alpha", [PY, "-c", loop])
    b = sup.start("beta-long", [PY, "-c", "print('one'); print('two')"])
    assert wait_for(lambda: "ready" in out.getvalue() and "two" in out.getvalue())
    gone = sup.wait(timeout=5)
    assert gone is b and b.proc.returncode == 0
    sup.stop(grace=5)
    assert not a.alive() and a.proc.returncode == -signal.SIGTERM
    lines = out.getvalue().splitlines()
    assert "alpha     | ready" in lines
    assert "beta-long | one" in lines and "beta-long | two" in lines
    assert any(line.startswith("botsq     | stopping alpha") for line in lines)


@pytest.mark.procs
def test_colour_prefix_on_request() -> None:
    out = io.StringIO()
    sup = Supervisor(out=out, colour=True)
    sup.start("w", [PY, "-c", "print('hi')"])
    sup.wait(timeout=5)
    sup.stop(grace=1)
    assert "\033[36mw       |\033[0m hi" in out.getvalue()


@pytest.mark.procs
def test_child_ignoring_sigterm_is_killed_after_grace() -> None:
    out = io.StringIO()
    sup = Supervisor(out=out, colour=False)
    stubborn = textwrap.dedent("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ignoring', flush=True)
        while True: time.sleep(0.1)
    """)
    c = sup.start("stubborn", [PY, "-c", stubborn])
    assert wait_for(lambda: "ignoring" in out.getvalue())
    t0 = time.monotonic()
    sup.stop(grace=1)
    assert 0.9 <= time.monotonic() - t0 < 5
    assert c.proc.returncode == -signal.SIGKILL
    assert "stubborn did not stop within 1s: killed" in out.getvalue()


@pytest.mark.procs
def test_log_dir_gets_output_and_secrets_are_redacted(tmp_path: Path) -> None:
    from engine.log import register_secrets

    register_secrets(["s3cret-pass"])
    out = io.StringIO()
    sup = Supervisor(out=out, colour=False, log_dir=tmp_path)
    sup.start("w", [PY, "-c", "print('broker amqp://u:s3cret-pass@h//')"])
    sup.wait(timeout=5)
    sup.stop(grace=1)
    assert (tmp_path / "w.out").read_text() == "broker amqp://u:***@h//\n"
    assert "s3cret" not in out.getvalue()


HARNESS = textwrap.dedent("""
    import sys, time
    from ops.procs import Supervisor
    sup = Supervisor(colour=False)
    try:
        with sup.running(grace=5):
            for name in ("one", "two"):
                sup.start(name, [sys.executable, "-c",
                          "import os,time; print('pid', os.getpid(), flush=True); time.sleep(600)"])
            sup.wait()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(0)
""")


def start_harness() -> tuple[subprocess.Popen[str], list[int]]:
    """The harness running, and the pids of its two children."""
    proc = subprocess.Popen([PY, "-c", HARNESS], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout is not None
    pids: list[int] = []
    while len(pids) < 2:
        line = proc.stdout.readline()
        assert line, "harness ended early"
        if "| pid" in line:
            pids.append(int(line.split()[-1]))
    return proc, pids


@pytest.mark.procs
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_parent_signal_stops_all_children(sig: int) -> None:
    proc, pids = start_harness()
    proc.send_signal(sig)
    rest = proc.communicate(timeout=20)[0]
    assert "stopping two, one" in rest
    for pid in pids:
        assert wait_for(lambda: gone(pid), 5), f"child {pid} still running"


@pytest.mark.procs
def test_children_die_with_a_killed_parent() -> None:
    proc, pids = start_harness()
    proc.kill()
    proc.wait()
    for pid in pids:
        assert wait_for(lambda: gone(pid), 5), f"orphan {pid} still running"


@pytest.mark.procs
def test_demo_failure_names_the_child_and_shows_its_last_lines(tmp_path: Path) -> None:
    from ops.demo import DemoFailed, wait_until

    sup = Supervisor(out=io.StringIO(), colour=False, log_dir=tmp_path)
    sup.start("worker", [PY, "-c", "print('cannot connect'); raise SystemExit(3)"])
    with pytest.raises(DemoFailed, match=r"worker exited with code 3 while waiting for x\n    worker \| cannot connect"):
        wait_until(lambda: False, 10, "x", sup)
    sup.stop(grace=1)


STUBBORN_HARNESS = textwrap.dedent("""
    import sys
    from ops.procs import Supervisor
    sup = Supervisor(colour=False)
    child = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             "print('pid', os.getpid(), flush=True); time.sleep(600)")
    try:
        with sup.running(grace=60):
            sup.start("stubborn", [sys.executable, "-c", child])
            sup.wait()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
""")


@pytest.mark.procs
def test_second_ctrl_c_while_stopping_kills_at_once() -> None:
    """README (botsq stack): Ctrl-C waits for the children (60 s grace); a second Ctrl-C kills them."""
    proc = subprocess.Popen([PY, "-c", STUBBORN_HARNESS], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "| pid" in line, line
    pid = int(line.split()[-1])
    proc.send_signal(signal.SIGINT)
    line = proc.stdout.readline()
    assert "stopping stubborn" in line, line
    time.sleep(0.5)
    assert not gone(pid)                   # it ignores SIGTERM: the grace period runs
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=20)[0]
    assert time.monotonic() - t0 < 10
    assert "stubborn interrupted while stopping: killed" in rest   # not "did not stop within 60s" after 0.5 s
    assert rest.rstrip().endswith("interrupted")
    assert wait_for(lambda: gone(pid), 5), f"child {pid} still running"


STOP_PHASE_HARNESS = STUBBORN_HARNESS.replace(   # the work is done once the child is up: the with-block ends
    "        sup.wait()\n",
    "        import time\n"
    "        while not sup.children[0].lines:\n"
    "            time.sleep(0.05)\n"
    "        print('stopping now', flush=True)\n")


@pytest.mark.procs
def test_ctrl_c_while_stopping_after_the_work_is_done_ends_as_interrupted() -> None:
    """botsq demo: a Ctrl-C in its stop phase printed a false "did not stop within 30s", then "all
    processed" and exit 0; the interrupt now reaches the caller (botsq demo: 130)."""
    proc = subprocess.Popen([PY, "-c", STOP_PHASE_HARNESS], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline().split()[-1])
    assert "stopping now" in proc.stdout.readline()
    assert "stopping stubborn" in proc.stdout.readline()          # the with-block ended: stop() waits
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=20)[0]
    assert "stubborn interrupted while stopping: killed" in rest and "did not stop within" not in rest
    assert rest.rstrip().endswith("interrupted")
    assert wait_for(lambda: gone(pid), 5), f"child {pid} still running"
