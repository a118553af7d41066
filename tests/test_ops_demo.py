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

CLOSED_PORT_BROKER = "amqp://guest:guest@127.0.0.1:1//"


def demo(tmp_path: Path, broker: str, timeout: float = 150, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BOTSQ_BROKER_URL": broker}
    env.pop("BOTSQ_CONFIG", None)
    return subprocess.run([bin_path("botsq"), "demo", "--dir", str(tmp_path / "demo-env"), *extra],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


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
