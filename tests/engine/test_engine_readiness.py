"""The settled listing (engine/readiness.py) stepped with a test clock: no sleeping, real folders and servers.

The clock's sleep is where the world moves on (a writer appends, a partner's upload grows), so
each case is exact: what a run takes is decided by what happened between its two looks.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from channel_servers import HOST, FtpServer, SftpServer, make_channel
from engine.channels.types import CHANNEL_TYPES, SETTLE_LOCAL, SETTLE_REMOTE
from engine.config.sections import DirMonitor
from engine.readiness import EMPTY_AFTER, Readiness
from engine.sightings import EmptySightings

LOG = logging.getLogger("test.readiness")


class StepClock:
    """Wall time that only moves when slept; ``on_sleep`` runs inside each sleep."""

    def __init__(self, on_sleep: Callable[[], None] | None = None) -> None:
        self.now = time.time()
        self.slept: list[float] = []
        self.on_sleep = on_sleep

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()


@pytest.fixture
def sightings(tmp_path: Path) -> EmptySightings:
    return EmptySightings(f"sqlite:///{tmp_path / 'track.sqlite'}")


def names(listing) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(i.name for i in listing)


def local(tmp_path: Path, **opts):  # type: ignore[no-untyped-def]
    (tmp_path / "in").mkdir(exist_ok=True)
    return make_channel(tmp_path, "file", path=str(tmp_path / "in"), **opts)


def age(path: Path, seconds: float = 60) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


# --------------------------------------------------------------------------- local folder

def test_a_file_written_again_during_the_wait_is_left_then_taken_whole(tmp_path: Path, sightings) -> None:  # type: ignore[no-untyped-def]
    ch = local(tmp_path)
    slow = tmp_path / "in" / "slow.edi"
    slow.write_bytes(b"UNB+part one'")                  # written and closed just now: the ERP is not done
    (tmp_path / "in" / "old.edi").write_bytes(b"old")
    age(tmp_path / "in" / "old.edi")                    # waiting since long: taken without a wait of its own

    def erp_writes_part_two() -> None:
        with open(slow, "ab") as f:
            f.write(b"UNT+part two'")

    clock = StepClock(erp_writes_part_two)
    got = Readiness(sightings, LOG, clock).listing(ch)
    assert names(got) == ["old.edi"] and list(got.held) == ["slow.edi"]
    assert got.held["slow.edi"] == "changed within the last 0.5 s"     # a file channel's default settle
    assert len(clock.slept) == 1 and 0 < clock.slept[0] <= SETTLE_LOCAL     # one wait for the channel

    clock.on_sleep = None
    clock.now += 10                                     # the next run, later: nothing changed since
    got = Readiness(sightings, LOG, clock).listing(ch)
    assert names(got) == ["old.edi", "slow.edi"] and got.held == {}
    item = next(i for i in got if i.name == "slow.edi")
    ch.fetch(item, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"UNB+part one'UNT+part two'"


def test_a_file_held_open_for_writing_is_never_taken_however_old(tmp_path: Path, sightings) -> None:  # type: ignore[no-untyped-def]
    ch = local(tmp_path)
    path = tmp_path / "in" / "open.edi"
    with open(path, "wb") as writer:
        writer.write(b"first half")
        writer.flush()
        age(path, 3600)                                 # an old mtime proves nothing while it is open
        clock = StepClock()
        got = Readiness(sightings, LOG, clock).listing(ch)
        assert names(got) == [] and got.held == {"open.edi": "open for writing"}
        assert clock.slept == []
        writer.write(b", second half")
    age(path, 3600)
    got = Readiness(sightings, LOG, clock).listing(ch)
    assert names(got) == ["open.edi"] and clock.slept == []


def test_settle_defaults_per_channel_type(tmp_path: Path, sightings) -> None:  # type: ignore[no-untyped-def]
    """A local folder settles as long as the directory monitor's default debounce, so the monitor's
    close -> file received path waits no longer; remote listings show times to the second."""
    assert SETTLE_LOCAL == DirMonitor.debounce == 0.5 and SETTLE_REMOTE == 2.0
    assert {t.name: t.settle for t in CHANNEL_TYPES.values() if t.receives} == \
        {"file": 0.5, "ftp": 2.0, "ftps": 2.0, "sftp": 2.0}
    readiness = Readiness(sightings, LOG, StepClock())
    assert readiness.settle_of(local(tmp_path)) == 0.5 and readiness.settle_of(local(tmp_path, settle=3)) == 3.0


def test_settle_zero_takes_files_as_listed(tmp_path: Path, sightings) -> None:  # type: ignore[no-untyped-def]
    ch = local(tmp_path, settle=0)
    path = tmp_path / "in" / "a.edi"
    with open(path, "wb") as writer:
        writer.write(b"x")
        writer.flush()
        clock = StepClock()
        got = Readiness(sightings, LOG, clock).listing(ch)
        assert names(got) == ["a.edi"] and clock.slept == []


def test_an_empty_folder_costs_no_wait(tmp_path: Path, sightings) -> None:  # type: ignore[no-untyped-def]
    clock = StepClock()
    assert names(Readiness(sightings, LOG, clock).listing(local(tmp_path))) == [] and clock.slept == []


# --------------------------------------------------------------------------- remote folders

@pytest.fixture(params=["ftp", "sftp"])
def partner(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "partner"
    (root / "in").mkdir(parents=True)
    if request.param == "ftp":
        with FtpServer(root, password="pw") as srv:
            yield srv, make_channel(tmp_path, "ftp", host=HOST, port=srv.port, user="alice", password="pw", path="in")
    else:
        with SftpServer(root, password="pw") as srv:
            yield srv, make_channel(tmp_path, "sftp", host=HOST, port=srv.port, user="alice", password="pw",
                                    path="in", insecure_no_host_key_check=True)


def test_a_growing_remote_file_is_left_until_two_listings_agree(partner, sightings) -> None:  # type: ignore[no-untyped-def]
    srv, ch = partner
    growing = srv.root / "in" / "big.edi"
    growing.write_bytes(b"a" * 1000)
    (srv.root / "in" / "done.edi").write_bytes(b"done")

    def upload_goes_on() -> None:
        with open(growing, "ab") as f:
            f.write(b"b" * 1000)

    clock = StepClock(upload_goes_on)
    with ch:
        got = Readiness(sightings, LOG, clock).listing(ch)
        assert names(got) == ["done.edi"] and clock.slept == [SETTLE_REMOTE]   # the remote types' default
        assert got.held == {"big.edi": "changed within 2 s (size 1000 -> 2000)"}
        clock.on_sleep = None
        got = Readiness(sightings, LOG, clock).listing(ch)
        assert names(got) == ["big.edi", "done.edi"] and [i.size for i in got if i.name == "big.edi"] == [2000]


def test_a_zero_byte_remote_file_waits_for_its_data_then_counts_as_empty(partner, sightings) -> None:  # type: ignore[no-untyped-def]
    srv, ch = partner
    (srv.root / "in" / "begun.edi").write_bytes(b"")      # STOR begun, no byte yet
    (srv.root / "in" / "empty.edi").write_bytes(b"")      # and one that stays empty
    clock = StepClock()
    with ch:
        first = Readiness(sightings, LOG, clock).listing(ch)
        assert names(first) == [] and sorted(first.held) == ["begun.edi", "empty.edi"]
        assert clock.slept == []                           # nothing could be taken: no second listing
        clock.now += EMPTY_AFTER / 2
        (srv.root / "in" / "begun.edi").write_bytes(b"data arrived")
        middle = Readiness(sightings, LOG, clock).listing(ch)
        assert names(middle) == ["begun.edi"] and list(middle.held) == ["empty.edi"]
        (srv.root / "in" / "begun.edi").unlink()
        clock.now += EMPTY_AFTER / 2 + 1                    # empty.edi: empty for longer than EMPTY_AFTER
        late = Readiness(sightings, LOG, clock).listing(ch)
        assert names(late) == ["empty.edi"] and late.held == {}


def test_sightings_forget_files_no_longer_empty(sightings) -> None:  # type: ignore[no-untyped-def]
    from datetime import datetime, timedelta
    t0 = datetime(2026, 1, 1, 12, 0, 0)
    assert sightings.empty_since("c", ["a", "b"], t0) == {"a": t0, "b": t0}
    t1 = t0 + timedelta(seconds=30)
    assert sightings.empty_since("c", ["a"], t1) == {"a": t0}               # b filled (or gone): forgotten
    assert sightings.empty_since("c", ["a", "b"], t1) == {"a": t0, "b": t1}  # b empty again: a new sighting
    assert sightings.empty_since("other", ["a"], t1) == {"a": t1}            # per channel
