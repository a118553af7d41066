"""A run killed while it fetches a file into the archive loses nothing and receives nothing twice.

Received files are written straight under their archive name (no temporary name and rename,
BENCHMARKS.md "Engine throughput"): what makes an archived file count is its record, committed
after the batch's flush, never its name. These tests kill a real ``bots-engine`` with SIGKILL in
the middle of writing the N-th file of a batch to the archive (half of it written) and check that
the next run receives every file whole, exactly once, and that no record names a file cut short.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import DEFAULT_INI, file_routes
from engine.db import session_scope
from engine.models import Incoming, Run

FILES = 30
KILL_AT = 12                # the 12th fetch of the first batch dies half-way through its write

# bots-engine with FileChannel.fetch patched: the N-th fetch writes half the file, then SIGKILL.
KILLER = r"""
import os, signal, sys
from engine.channels.file import FileChannel
at, calls = int(os.environ["KILL_AT"]), [0]
real = FileChannel.fetch
def fetch(self, item, dest):
    calls[0] += 1
    if calls[0] == at:
        data = open(item.ref, "rb").read()
        with open(dest, "wb") as f:
            f.write(data[:len(data) // 2])
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, item, dest)
FileChannel.fetch = fetch
from engine.cli.engine import main
sys.argv[0] = "bots-engine"
main()
"""


@pytest.mark.procs
def test_run_killed_mid_fetch_receives_every_file_once_and_whole(make_env) -> None:  # type: ignore[no-untyped-def]
    env = make_env(ini=DEFAULT_INI, routes=file_routes(filemask="*.edi"))
    content = {f"f{n:03d}.edi": f"UNB+{n:03d}'".encode() * 40 for n in range(FILES)}
    for name, data in content.items():
        env.drop(f"data/in/{name}", data)
    env.path("data/out").mkdir(parents=True)
    killer = env.root / "killer.py"
    killer.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(killer), "-c", str(env.configdir), "--new"], cwd=env.root,
                          env={**os.environ, "KILL_AT": str(KILL_AT)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    # the dead run recorded nothing of its unfinished batch and removed no source
    assert sorted(os.listdir(env.path("data/in"))) == sorted(content)
    assert os.listdir(env.path("data/out")) == []
    cfg = env.config()
    with session_scope(cfg.database_url) as s:
        assert list(s.scalars(select(Incoming))) == []
    # the archive holds the files it fetched, the last one cut short, under names no record uses
    archived = [p for p in (cfg.directories.archive).rglob("*") if p.is_file()]
    assert len(archived) == KILL_AT
    assert min(p.stat().st_size for p in archived) < len(content["f000.edi"])

    again = env.run("--new")
    assert again.returncode == 0, again.stdout + again.stderr
    out = env.path("data/out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == content        # every file, whole, once
    assert os.listdir(env.path("data/in")) == []
    with session_scope(cfg.database_url) as s:
        ins = list(s.scalars(select(Incoming)))
        assert sorted(i.filename for i in ins) == sorted(content)             # one record per file
        assert {i.status for i in ins} == {"done"}
        for i in ins:                                                         # each names a whole copy
            assert (cfg.directories.botssys / i.archive_path).read_bytes() == content[i.filename]
        statuses = [r.status for r in s.scalars(select(Run).order_by(Run.id))]
    assert statuses == ["crashed", "ok"]
