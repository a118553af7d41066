"""``botsq demo``: README's main command, with and without a broker."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import bin_path
from test_ops_procs import descendants, gone, wait_for

CLOSED_PORT_BROKER = "amqp://guest:guest@127.0.0.1:1//"


def demo(tmp_path: Path, broker: str, timeout: float = 150, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BOTSQ_BROKER_URL": broker}
    env.pop("BOTSQ_CONFIG", None)
    return subprocess.run([bin_path("botsq"), "demo", "--dir", str(tmp_path / "demo-env"), *extra],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


@pytest.mark.procs
def test_without_a_broker_it_says_so_in_one_line_and_runs_the_engine(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = demo(tmp_path, CLOSED_PORT_BROKER)
    assert res.returncode == 0, res.stdout + res.stderr
    assert time.monotonic() - t0 < 30
    no_broker = [line for line in res.stdout.splitlines() if "no broker" in line]
    assert len(no_broker) == 1
    assert "@127.0.0.1:1// cannot be reached" in no_broker[0] and "running the engine directly" in no_broker[0]
    assert re.search(r"run 1 +new \(default run\) +ok +3 in, 4 sent", res.stdout), res.stdout
    out = tmp_path / "demo-env" / "data" / "out"
    assert sorted(p.name for p in (out / "invoices").iterdir()) == ["invoice_5001.edi"]
    assert len(list((out / "orders").iterdir())) == 3
    # a second demo in the same folder works too (the sample files are put back)
    again = demo(tmp_path, CLOSED_PORT_BROKER)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"run 2 +new \(default run\) +ok +3 in", again.stdout), again.stdout


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_with_a_broker_the_whole_stack_runs_by_priority_and_stops(tmp_path: Path, own_vhost: str) -> None:
    res = demo(tmp_path, own_vhost)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "answers: running worker, directory monitor and beat" in out
    assert "started worker, monitor" in out and "started beat" in out
    queued = [line.split(None, 2)[1:] for line in out.splitlines() if line.startswith("  queued")]
    assert [q[0] for q in queued] == ["p1", "p9", "p5", "p5", "p1"]
    assert queued[3][1].endswith("discarded: identical to a waiting job")
    assert sum("added" in q[1] for q in queued) == 4
    order = re.findall(r"^\s+\d+\. (p\d) (queued|monitor)\s+run \d+\s+new (\S+)", out, re.M)
    # beat starts after the queued jobs ran; a run of its schedule is labelled "beat"; the five
    # dropped files normally share one monitor job (two, should the drop straddle a debounce window)
    assert order[:3] == [("p1", "queued", "orders"), ("p5", "queued", "invoices"), ("p9", "queued", "(default")]
    assert order[3:] and set(order[3:]) == {("p3", "monitor", "drop")}, out
    m = re.search(r"File to output \(5 dropped files\): min ([\d.]+) s, median ([\d.]+) s, max ([\d.]+) s", out)
    assert m and float(m.group(3)) < 10, out
    assert "all processed; worker, monitor and beat stopped" in out
    env = tmp_path / "demo-env"
    assert sorted(p.name for p in (env / "data" / "out" / "drop").iterdir()) == [f"demo_drop_{i}.edi" for i in range(1, 6)]
    for name in ("worker", "beat", "monitor"):
        assert (env / "botssys" / "logging" / "demo" / f"{name}.out").stat().st_size > 0


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_ctrl_c_stops_the_demo_and_every_child(tmp_path: Path, own_vhost: str) -> None:
    env = {**os.environ, "BOTSQ_BROKER_URL": own_vhost}
    proc = subprocess.Popen([bin_path("botsq"), "demo", "--dir", str(tmp_path / "demo-env")], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "started worker, monitor" in line:
            break
    kids = descendants(proc.pid)
    assert len(kids) >= 2, lines
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted; everything stopped" in rest
    assert wait_for(lambda: all(gone(k) for k in kids), 10), [k for k in kids if not gone(k)]


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_jobs_left_waiting_by_an_interrupted_demo_run_first_and_stay_out_of_the_report(
        tmp_path: Path, own_vhost: str) -> None:
    """A demo cut off by Ctrl-C leaves its queued jobs waiting; the next demo lets the worker run
    them first, so its own jobs are not taken for duplicates and its report is its own."""
    assert demo(tmp_path, CLOSED_PORT_BROKER).returncode == 0        # the environment, written
    configdir = tmp_path / "demo-env" / "config"
    env = {**os.environ, "BOTSQ_BROKER_URL": own_vhost}
    env.pop("BOTSQ_CONFIG", None)
    left = subprocess.run([bin_path("bots-job2queue"), "-c", str(configdir), "-p5", "bots-engine", "--new", "invoices"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert left.returncode == 0, left.stdout + left.stderr          # waiting: no worker yet
    res = demo(tmp_path, own_vhost)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "1 job(s) left waiting by an earlier demo: the worker runs them first" in out
    invoices = [line.split("invoices", 1)[1].strip() for line in out.splitlines()
                if line.startswith("  queued") and "invoices" in line]
    assert invoices == ["added", "discarded: identical to a waiting job"], out
    order = re.findall(r"^\s+\d+\. (p\d) (queued|monitor)\s+run \d+\s+new (.+?)\s+ok\s+(\d+) in", out, re.M)
    assert order[:3] == [("p1", "queued", "orders", "2"), ("p5", "queued", "invoices", "1"),
                         ("p9", "queued", "(default run)", "0")], out
