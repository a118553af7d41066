"""Directory monitor, in process with a recording publisher: when a file counts, coalescing,
start-up scan, rescans after lost events, folders that come back, publishing retries."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.readiness import open_for_writing
from ops.dirmonitor.monitor import Monitor

ROUTES = """
[channels.in]
type = "file"
path = "data/in"
filemask = "*.edi"
[channels.in2]
type = "file"
path = "data/in2"
[routes.r1]
[[routes.r1.parts]]
fromchannel = "in"
[routes.r2]
[[routes.r2.parts]]
fromchannel = "in2"
"""


def ini(**extra: object) -> str:
    keys = {"path": "data/in", "filemask": "*.edi", "route": "r1", "priority": 4, "debounce": 0.2, **extra}
    body = "\n".join(f"{k} = {v}" for k, v in keys.items())
    return f"[jobqueue]\nenabled = True\n[dirmonitor1]\n{body}\n"


class Recorder:
    """Stands in for tasks.submit: records (route, priority, files, time); can fail on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, set[str], float]] = []
        self.fail = 0
        self.mon: Monitor | None = None

    def __call__(self, route: str, priority: int) -> str:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("broker unreachable (test)")
        assert self.mon is not None
        files = set(self.mon.triggers.pending[route].files)
        self.calls.append((route, priority, files, time.monotonic()))
        return "added"

    def files(self) -> set[str]:
        return {os.path.basename(f) for c in self.calls for f in c[2]}

    def wait(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out; calls: {[(c[0], sorted(map(os.path.basename, c[2]))) for c in self.calls]}")


@pytest.fixture
def monitor(make_env) -> Iterator[Callable[..., tuple[Monitor, Recorder, Path]]]:
    started: list[tuple[Monitor, threading.Thread]] = []

    def start(ini_text: str | None = None, before: Callable[[Path], None] | None = None, **extra: object):
        env = make_env(ini=ini_text or ini(**extra), routes=ROUTES)
        for d in ("data/in", "data/in2"):
            env.path(d).mkdir(parents=True, exist_ok=True)
        if before:
            before(env.root)
        cfg = env.config()
        rec = Recorder()
        log = logging.getLogger(f"botsq.test.dirmonitor.{len(started)}")
        mon = Monitor(cfg, log, submit=rec)
        rec.mon = mon
        mon.initialize()
        t = threading.Thread(target=lambda: _loop(mon), daemon=True)
        t.start()
        started.append((mon, t))
        return mon, rec, env.root

    def _loop(mon: Monitor) -> None:
        try:
            while not mon.stop_event.is_set():
                mon.step(0.2)
        finally:
            mon.shutdown()

    yield start
    for mon, t in started:
        mon.stop_event.set()
        t.join(10)


def test_slow_write_counts_only_after_close(monitor):
    mon, rec, root = monitor()
    with open(root / "data/in/slow.edi", "wb") as fh:
        for i in range(4):
            fh.write(b"chunk %d\n" % i)
            fh.flush()
            time.sleep(0.3)                         # longer than the debounce
        assert rec.calls == []
        closed = time.monotonic()
    rec.wait(lambda: len(rec.calls) == 1)
    route, prio, files, at = rec.calls[0]
    assert (route, prio, rec.files()) == ("r1", 4, {"slow.edi"})
    assert 0.15 < at - closed < 1.5
    time.sleep(0.4)
    assert len(rec.calls) == 1


def test_moved_in_from_outside_and_renamed_inside(monitor, tmp_path):
    mon, rec, root = monitor()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.edi").write_bytes(b"a")
    os.rename(outside / "a.edi", root / "data/in/a.edi")        # watchdog 7: a bare "created"
    rec.wait(lambda: rec.files() == {"a.edi"})
    (root / "data/in/b.tmp").write_bytes(b"b")                  # not matching the mask...
    os.rename(root / "data/in/b.tmp", root / "data/in/b.edi")   # ...until renamed
    rec.wait(lambda: rec.files() == {"a.edi", "b.edi"})
    assert len(rec.calls) == 2 and all(c[0] == "r1" for c in rec.calls)


@pytest.mark.procs
def test_moved_in_while_another_process_still_writes(monitor, tmp_path):
    """A file moved in while its writer still has it open counts only when the writer closes it."""
    mon, rec, root = monitor()
    outside = tmp_path / "outside"
    outside.mkdir()
    src, dst = outside / "w.edi", root / "data/in/w.edi"
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys,time\nf=open(sys.argv[1],'wb')\nf.write(b'x');f.flush()\nprint('open',flush=True)\n"
         "sys.stdin.readline()\nf.write(b'y');f.close()\n", str(src)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        os.rename(src, dst)
        assert open_for_writing({str(dst)})[0] == {str(dst)}
        time.sleep(0.8)
        assert rec.calls == []
        writer.stdin.write("go\n")
        writer.stdin.flush()
        writer.wait(5)
    finally:
        writer.kill()
    rec.wait(lambda: rec.files() == {"w.edi"})
    assert dst.read_bytes() == b"xy"


@pytest.mark.slow
def test_burst_coalesces_into_a_few_jobs(monitor):
    mon, rec, root = monitor()
    n = 3000
    t0 = time.monotonic()
    for i in range(n):
        (root / f"data/in/f{i:05d}.edi").write_bytes(b"x")
    took = time.monotonic() - t0
    rec.wait(lambda: len(rec.files()) == n, timeout=20)
    # one publish per debounce window while the burst lasts (the queue's dedup then keeps at
    # most one of them waiting), not one per file
    assert len(rec.calls) <= took / 0.2 + 10, (len(rec.calls), took)
    assert sum(len(c[2]) for c in rec.calls) == n


def test_files_already_waiting_trigger_a_job_at_start(monitor):
    def before(root: Path) -> None:
        for name in ("old1.edi", "old2.edi", "skip.txt"):
            (root / "data/in" / name).write_bytes(b"x")
            os.utime(root / "data/in" / name, (time.time() - 60, time.time() - 60))

    mon, rec, root = monitor(before=before)
    rec.wait(lambda: rec.files() == {"old1.edi", "old2.edi"})
    assert len(rec.calls) == 1


@pytest.mark.parametrize("kind", ["builtin", "bots"])
def test_process_existing_false_leaves_waiting_files_for_the_next_arrival(monitor, kind, tmp_path):
    """Bots' bare [dirmonitor] process_existing = False: files there at start queue nothing, not even
    at a rescan; the next file to arrive queues the route (whose run takes the old files too)."""
    def before(root: Path) -> None:
        for name in ("old1.edi", "old2.edi"):
            (root / "data/in" / name).write_bytes(b"x")
            os.utime(root / "data/in" / name, (time.time() - 60, time.time() - 60))

    engine = ""
    if kind == "bots":
        standin = tmp_path / "bots-engine"
        standin.write_text("#!/bin/sh\nexit 0\n")
        standin.chmod(0o755)
        engine = f"[engine]\nkind = bots\ncommand = {standin}\n"
    text = ini(rescan=0.3) + engine + "[dirmonitor]\nprocess_existing = False\n"
    mon, rec, root = monitor(ini_text=text, before=before)
    time.sleep(1.2)                                      # past the start and a few rescans
    assert rec.calls == []
    (root / "data/in/new.edi").write_bytes(b"x")
    rec.wait(lambda: rec.files() == {"new.edi"})
    time.sleep(0.8)
    assert len(rec.calls) == 1


def test_process_existing_must_be_true_or_false(make_env):
    env = make_env(ini=ini() + "[dirmonitor]\nprocess_existing = sometimes\n", routes=ROUTES)
    with pytest.raises(ConfigError, match=r"\[dirmonitor\] process_existing"):
        env.config()


def test_unchanged_files_are_not_queued_again_by_rescans(monitor):
    mon, rec, root = monitor(rescan=0.3)
    (root / "data/in/stays.edi").write_bytes(b"x")      # e.g. the route leaves it in place
    rec.wait(lambda: len(rec.calls) == 1)
    time.sleep(1.2)
    assert len(rec.calls) == 1
    (root / "data/in/stays.edi").write_bytes(b"changed")
    rec.wait(lambda: len(rec.calls) == 2)


def test_lost_events_are_found_by_the_overflow_rescan(monitor):
    mon, rec, root = monitor(rescan=3600)
    mon.watching.drop_events = True                   # what an inotify queue overflow does
    (root / "data/in/lost.edi").write_bytes(b"x")
    time.sleep(0.6)
    mon.watching.drop_events = False
    assert rec.calls == []
    logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; filesystem events were lost")
    rec.wait(lambda: rec.files() == {"lost.edi"}, timeout=5)


@pytest.mark.slow
def test_watched_folder_deleted_and_recreated(monitor):
    mon, rec, root = monitor()
    folder = root / "data/in"
    shutil.rmtree(folder)
    time.sleep(1.5)
    folder.mkdir()
    rec.wait(lambda: mon.watches[0].missing_since is None and mon.watching.is_watching(mon.watches[0]), timeout=5)
    (folder / "after.edi").write_bytes(b"x")
    rec.wait(lambda: rec.files() == {"after.edi"})


@pytest.mark.slow
def test_folder_recreated_with_files_in_it(monitor, tmp_path):
    mon, rec, root = monitor()
    folder = root / "data/in"
    shutil.rmtree(folder)
    time.sleep(1.2)
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "came_with_folder.edi").write_bytes(b"x")
    os.utime(staged / "came_with_folder.edi", (time.time() - 60, time.time() - 60))
    os.rename(staged, folder)
    rec.wait(lambda: rec.files() == {"came_with_folder.edi"}, timeout=6)


@pytest.mark.slow
def test_publish_failures_are_retried_and_nothing_is_lost(monitor):
    mon, rec, root = monitor()
    rec.fail = 3
    (root / "data/in/one.edi").write_bytes(b"1")
    time.sleep(0.5)
    (root / "data/in/two.edi").write_bytes(b"2")      # joins the job that is still waiting to go out
    rec.wait(lambda: rec.files() == {"one.edi", "two.edi"}, timeout=15)
    assert len(rec.calls) == 1 and rec.fail == 0


def test_the_loop_steps_on_a_clock_passed_in_without_sleeping(make_env):
    """huey style: initialize(now) / loop(now) / shutdown(); the debounce and the publish back-off
    are measured on the clock the test passes in."""
    env = make_env(ini=ini(debounce=5), routes=ROUTES)
    env.path("data/in").mkdir(parents=True)
    for name in ("a.edi", "b.edi"):                    # already waiting when the monitor starts
        env.drop(f"data/in/{name}", "x")
        os.utime(env.path(f"data/in/{name}"), (time.time() - 60, time.time() - 60))
    rec = Recorder()
    mon = Monitor(env.config(), logging.getLogger("botsq.test.dirmonitor.loop"), submit=rec)
    rec.mon = mon
    t = 1000.0
    mon.initialize(now=t)
    try:
        assert rec.calls == [] and set(mon.triggers.pending) == {"r1"}
        assert mon.loop(t + 4.9) > 0 and rec.calls == []          # the debounce (5 s) has not passed
        rec.fail = 1
        mon.loop(t + 5.0)                                          # due: the publish fails...
        assert rec.calls == [] and rec.fail == 0
        mon.loop(t + 5.4)                                          # ...and is retried after RETRY_MIN (0.5 s)
        assert rec.calls == []
        mon.loop(t + 5.5)
        assert [(c[0], c[1]) for c in rec.calls] == [("r1", 4)] and rec.files() == {"a.edi", "b.edi"}
        assert not mon.triggers.pending
    finally:
        mon.shutdown()


def test_polling_mode_waits_for_a_stable_size(monitor):
    mon, rec, root = monitor(polling="True", debounce=0.4)
    with open(root / "data/in/p.edi", "wb") as fh:
        for i in range(6):
            fh.write(b"chunk\n")
            fh.flush()
            time.sleep(0.2)                           # changes more often than the debounce
        assert rec.calls == []
    rec.wait(lambda: rec.files() == {"p.edi"}, timeout=5)


def test_two_monitors_route_and_priority(monitor):
    text = ini() + "[dirmonitor2]\npath = data/in2\nfilemask = *\nroute = r2\npriority = 2\ndebounce = 0.1\n"
    mon, rec, root = monitor(ini_text=text)
    (root / "data/in2/x.dat").write_bytes(b"x")
    (root / "data/in/y.edi").write_bytes(b"y")
    (root / "data/in/z.txt").write_bytes(b"z")        # not the mask
    rec.wait(lambda: len(rec.calls) == 2)
    got = {(c[0], c[1], frozenset(map(os.path.basename, c[2]))) for c in rec.calls}
    assert got == {("r2", 2, frozenset({"x.dat"})), ("r1", 4, frozenset({"y.edi"}))}


def test_a_file_counts_only_when_the_channel_reads_it(monitor, caplog):
    """The monitor's mask is wider than channel in's (*.edi): a file counts only when the channel
    would read it - its mask, no dot-names, no sub-folder (main queued jobs for .part.edi and x.txt)."""
    caplog.set_level(logging.WARNING)
    mon, rec, root = monitor(filemask="*")
    assert "[dirmonitor1] filemask '*' differs from channel in's filemask '*.edi'" in caplog.text
    (root / "data/in/sub").mkdir()
    for name in (".part.edi", "x.txt", "sub/deep.edi", "a.edi"):
        (root / "data/in" / name).write_text("x")
    rec.wait(lambda: rec.files() == {"a.edi"})
    time.sleep(0.6)                                 # past the debounce: nothing else counted
    assert rec.files() == {"a.edi"} and len(rec.calls) == 1


def test_a_folder_no_channel_of_the_route_reads_is_warned_about(monitor, caplog):
    caplog.set_level(logging.WARNING)
    monitor(route="r2")                             # r2 reads data/in2, the monitor watches data/in
    assert "[dirmonitor1] no file in-channel of route r2 reads" in caplog.text


def test_recursive_is_refused_in_process_too(make_env):
    from engine.errors import UsageError
    env = make_env(ini=ini(recursive=True), routes=ROUTES)
    env.path("data/in").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"\[dirmonitor1\] recursive: .*set recursive = False"):
        Monitor(env.config(), logging.getLogger("botsq.test.dirmonitor.recursive"), submit=Recorder())


def test_with_kind_bots_a_section_is_read_as_bots_reads_it_recursive_included(monitor, tmp_path):
    """[engine] kind = bots: the channels are Bots', so Bots' [dirmonitorN] with recursive = True is
    accepted and files in sub-folders count - also those of a folder moved in whole (main refused the
    section at start)."""
    from bots_helpers import engine_section
    mon, rec, root = monitor(ini_text=ini(recursive=True) + engine_section())
    (root / "data/in/sub").mkdir()
    (root / "data/in/sub/deep.edi").write_text("x")
    rec.wait(lambda: rec.files() == {"deep.edi"})
    outside = tmp_path / "batch"
    outside.mkdir()
    (outside / "moved.edi").write_text("y")
    os.rename(outside, root / "data/in/batch")                 # no event of its own for moved.edi
    rec.wait(lambda: rec.files() == {"deep.edi", "moved.edi"})
    assert {c[0] for c in rec.calls} == {"r1"}


def test_heartbeat_written_and_marked_stopped(monitor):
    from ops.dirmonitor.heartbeat import heartbeat_age, read_heartbeat

    mon, rec, root = monitor()
    hb = read_heartbeat(mon.cfg)
    assert hb and hb["state"] == "running" and hb["pid"] == os.getpid()
    age, limit = heartbeat_age(mon.cfg)
    assert age is not None and age < limit
    mon.stop_event.set()
    rec.wait(lambda: (read_heartbeat(mon.cfg) or {}).get("state") == "stopped")
    assert heartbeat_age(mon.cfg)[0] is None


@pytest.mark.procs
def test_a_second_monitor_of_the_same_config_is_refused(make_env):
    """A second bots-dirmonitor started without a word and overwrote the first one's heartbeat."""
    import json
    import re
    import socket
    env = make_env(ini=ini(), routes=ROUTES)
    env.path("data/in").mkdir(parents=True)
    hb = env.path("botssys/dirmonitor.heartbeat")
    hb.parent.mkdir(parents=True, exist_ok=True)
    hb.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "timestamp": time.time(),
                              "state": "running"}))                 # a live monitor: this test's own process
    res = env.run(cmd="bots-dirmonitor", timeout=60)
    assert res.returncode == 1, res.stderr
    assert re.fullmatch(re.escape(f"bots-dirmonitor: error: another bots-dirmonitor runs for this config (pid "
                                  f"{os.getpid()} on {socket.gethostname()}, heartbeat ") + r"\d+ s ago\): stop it first\n",
                        res.stderr), res.stderr


@pytest.mark.parametrize("ini_text,err", [
    ("[jobqueue]\nenabled = False\n[dirmonitor1]\npath = data/in\n", r"\[jobqueue\] enabled: the queue is disabled"),
    ("[jobqueue]\nenabled = True\n", r"no \[dirmonitorN\] section"),
    ("[jobqueue]\nenabled = True\n[dirmonitor1]\npath = data/nothere\nroute = r1\n",
     r"\[dirmonitor1\] path: .*data/nothere does not exist"),
    ("[jobqueue]\nenabled = True\n[dirmonitor1]\npath = data/in\nroute = nosuch\n", r"\[dirmonitor1\] route: no route"),
    ("[jobqueue]\nenabled = True\n[dirmonitor1]\npath = data/in\nroute = r1\nrecursive = True\n",
     r"\[dirmonitor1\] recursive: the file channel reads only its own folder, never sub-folders"),
])
@pytest.mark.procs
def test_refuses_to_start_with_one_line(make_env, ini_text, err):
    import re

    env = make_env(ini=ini_text, routes=ROUTES)
    env.path("data/in").mkdir(parents=True)
    res = env.run(cmd="bots-dirmonitor", timeout=60)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("bots-dirmonitor: error: ")
    assert re.search(err, res.stderr), res.stderr


@pytest.mark.procs
def test_help():
    from conftest import bin_path

    res = subprocess.run([bin_path("bots-dirmonitor"), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "-c DIR" in res.stdout and "[dirmonitorN]" in res.stdout
