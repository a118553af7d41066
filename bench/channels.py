#!/usr/bin/env python3
"""Channel throughput: N files of SIZE bytes sent over FTP and over SFTP to a local server.

Each channel (``engine.channels.ftp.FtpChannel``, ``engine.channels.sftp.SftpChannel``: one
connection per run, a temporary name and a rename per file) is compared with the floor: the
same files uploaded with the bare client library in a loop over one connection
(``ftplib.FTP.storbinary``, ``paramiko.SFTPClient.put``). Also the way back: the channel's
``list_incoming`` + ``fetch`` against ``retrbinary`` / ``get`` in a loop. Goal: >= 70 % of the
floor. The servers (pyftpdlib, the tests' paramiko SFTP server) run in a process of their own,
so they do not share the client's interpreter lock. Floor and channel keep their connection
open and take turns every ``--block`` files, so a busy machine slows both alike; each side's
time includes its login and logout.

Sends have a third side, "same trips": the bare library making the round trips the channel's
guarantees need (upload to a temporary name, the server's size checked, rename), with nothing
else around them. floor / same trips is what those round trips cost; same trips / channel is the
channel's own overhead. ``--trips`` times each FTP command on its own on the same server.

    .venv/bin/python bench/channels.py                    # 1,000 files of 2 KB, median of 5 rounds
    .venv/bin/python bench/channels.py --files 300 --rounds 1
    .venv/bin/python bench/channels.py --only ftp --trips # and the time of each FTP command
"""
from __future__ import annotations

import argparse
import ftplib
import logging
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

PASSWORD = "bench-pw"


def serve(kind: str, root: str, port_q, stop) -> None:  # type: ignore[no-untyped-def]
    logging.basicConfig(level=logging.WARNING)   # else pyftpdlib logs every command, slowing the server
    from channel_servers import FtpServer, SftpServer
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)   # clients hanging up are no news

    srv = FtpServer(Path(root), password=PASSWORD) if kind == "ftp" else SftpServer(Path(root), password=PASSWORD)
    with srv:
        port_q.put(srv.port)
        stop.wait()


def make_channel(kind: str, port: int, workdir: Path):  # type: ignore[no-untyped-def]
    from channel_servers import HOST
    from channel_servers import make_channel as build

    extra = {"insecure_no_host_key_check": True} if kind == "sftp" else {}
    return build(workdir, kind, logging.getLogger("bench"), host=HOST, port=port, user="alice", password=PASSWORD,
                 path="box", **extra)


# --------------------------------------------------------------------------- the floor: bare libraries

class FtpFloor:
    """ftplib as a script would use it: one connection, storbinary / retrbinary per file."""

    def __init__(self, port: int) -> None:
        self.ftp = ftplib.FTP()
        self.ftp.connect("127.0.0.1", port)
        self.ftp.login("alice", PASSWORD)
        self.ftp.cwd("box")

    def send(self, f: Path, name: str) -> None:
        with open(f, "rb") as fh:
            self.ftp.storbinary(f"STOR {name}", fh)

    def names(self, prefix: str) -> list[str]:
        return [n for n in self.ftp.nlst() if n.startswith(prefix)]

    def fetch(self, name: str, dest: Path) -> None:
        with open(dest, "wb") as fh:
            self.ftp.retrbinary(f"RETR {name}", fh.write)

    def close(self) -> None:
        self.ftp.quit()


class FtpSameTrips(FtpFloor):
    """ftplib making the channel's round trips per file and nothing else: STOR to a temporary
    name (TYPE I once per connection, as the channel), SIZE, RNFR + RNTO."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.ftp.voidcmd("TYPE I")

    def send(self, f: Path, name: str) -> None:
        tmp = f".{name}.part"
        data = f.read_bytes()
        with self.ftp.transfercmd(f"STOR {tmp}") as conn:
            conn.sendall(data)
        self.ftp.voidresp()
        if self.ftp.size(tmp) != len(data):
            raise RuntimeError(f"{tmp}: size differs")
        self.ftp.rename(tmp, name)


class SftpFloor:
    """paramiko as a script would use it: one connection, put / get per file."""

    def __init__(self, port: int) -> None:
        import paramiko
        self.t = paramiko.Transport(("127.0.0.1", port))
        self.t.connect(username="alice", password=PASSWORD)
        self.sftp = paramiko.SFTPClient.from_transport(self.t)
        self.sftp.chdir("box")

    def send(self, f: Path, name: str) -> None:
        self.sftp.put(str(f), name)

    def names(self, prefix: str) -> list[str]:
        return [n for n in self.sftp.listdir() if n.startswith(prefix)]

    def fetch(self, name: str, dest: Path) -> None:
        self.sftp.get(name, str(dest))

    def close(self) -> None:
        self.t.close()


class SftpSameTrips(SftpFloor):
    """paramiko making the channel's round trips per file: ``put`` to a temporary name (its own
    ``stat`` is the size check) and a plain rename."""

    def send(self, f: Path, name: str) -> None:
        tmp = f".{name}.part"
        self.sftp.put(str(f), tmp)
        self.sftp.rename(tmp, name)


# --------------------------------------------------------------------------- the channels

class ChannelSide:
    def __init__(self, kind: str, port: int, workdir: Path, prefix: str) -> None:
        self.ch = make_channel(kind, port, workdir)
        self.ch.filemask = prefix + "*"
        self.ch.open()
        self.items: dict[str, object] = {}

    def send(self, f: Path, name: str) -> None:
        self.ch.send(f, name)

    def names(self, prefix: str) -> list[str]:
        self.items = {i.name: i for i in self.ch.list_incoming()}
        return list(self.items)

    def fetch(self, name: str, dest: Path) -> None:
        self.ch.fetch(self.items[name], dest)

    def close(self) -> None:
        self.ch.close()


def wait_for_free_ports(most: int = 12_000, longest: float = 120.0) -> None:
    """Between FTP rounds: wait until at most ``most`` TCP connections of this machine are in
    TIME_WAIT (Linux, /proc/net/sockstat). Every FTP transfer is a data connection, and the side
    that closes it first holds its port for a minute; a round makes about 5 per file, so rounds
    back to back use up the ephemeral ports (the server's PASV then fails with EADDRINUSE, and so
    does any other program on the machine asking for a port)."""
    deadline = time.monotonic() + longest
    while time.monotonic() < deadline:
        try:
            fields = Path("/proc/net/sockstat").read_text().split("TCP:")[1].split("\n")[0].split()
            waiting = int(fields[fields.index("tw") + 1])
        except (OSError, IndexError, ValueError):
            return                      # not Linux: nothing to look at
        if waiting <= most:
            return
        time.sleep(1)


def bench(kind: str, nfiles: int, size: int, rounds: int, block: int, work: Path) -> list[dict[str, float]]:
    """Seconds per side and direction, one dict per round. Floor and channel (and, sending, same
    trips) take turns every ``block`` files over connections they each keep open, so a busy machine
    slows them alike."""
    root = work / f"{kind}-server"
    box = root / "box"
    box.mkdir(parents=True)
    src = work / f"{kind}-src"
    src.mkdir()
    payload = os.urandom(size)
    files = []
    for n in range(nfiles):
        p = src / f"{n:05}.edi"
        p.write_bytes(payload)
        files.append(p)
    ctx = mp.get_context("spawn")
    port_q, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=serve, args=(kind, str(root), port_q, stop), daemon=True)
    proc.start()
    port = port_q.get(timeout=30)
    results: list[dict[str, float]] = []
    try:
        for rnd in range(rounds):
            if kind == "ftp":
                wait_for_free_ports()
            shutil.rmtree(box, ignore_errors=True)
            box.mkdir()
            took = {k: 0.0 for k in ("floor_send", "chan_send", "same_send", "floor_fetch", "chan_fetch")}
            t0 = time.perf_counter()
            floor = FtpFloor(port) if kind == "ftp" else SftpFloor(port)
            took["floor_send"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            same = FtpSameTrips(port) if kind == "ftp" else SftpSameTrips(port)
            took["same_send"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            chan = ChannelSide(kind, port, work, "c")
            took["chan_send"] += time.perf_counter() - t0
            sides = [("floor", floor, "f"), ("chan", chan, "c")]
            senders = [*sides, ("same", same, "s")]
            for b, start in enumerate(range(0, nfiles, block)):
                turn = (b + rnd) % len(senders)          # each side goes first, second, last in turn
                for label, side, prefix in senders[turn:] + senders[:turn]:
                    t0 = time.perf_counter()
                    for f in files[start:start + block]:
                        side.send(f, prefix + f.name)
                    took[f"{label}_send"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            same.close()
            took["same_send"] += time.perf_counter() - t0
            assert len(os.listdir(box)) == 3 * nfiles, "not every file arrived"
            for name in os.listdir(box):                 # the fetches list what floor and channel sent
                if name.startswith("s"):
                    os.unlink(box / name)
            names = {}
            for label, side, prefix in sides:
                dest = work / f"{kind}-{label}-got"
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir()
                t0 = time.perf_counter()
                names[label] = sorted(side.names(prefix))
                took[f"{label}_fetch"] += time.perf_counter() - t0
                assert len(names[label]) == nfiles, (label, len(names[label]))
            for b, start in enumerate(range(0, nfiles, block)):
                for label, side, _prefix in sides if (b + rnd) % 2 == 0 else sides[::-1]:
                    dest = work / f"{kind}-{label}-got"
                    t0 = time.perf_counter()
                    for name in names[label][start:start + block]:
                        side.fetch(name, dest / name)
                    took[f"{label}_fetch"] += time.perf_counter() - t0
            for label, side, _prefix in sides:
                t0 = time.perf_counter()
                side.close()
                took[f"{label}_fetch"] += time.perf_counter() - t0
            results.append(took)
    finally:
        stop.set()
        proc.join(10)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2048, help="bytes per file (default 2048)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds after a warm-up round; the median is shown "
                                                          "(default 5)")
    ap.add_argument("--block", type=int, default=50, help="files per turn of floor and channel (default 50)")
    ap.add_argument("--only", choices=("ftp", "sftp"), help="one protocol only")
    ap.add_argument("--trips", action="store_true", help="also time each FTP command on its own")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    n = args.files
    print(f"{n} files of {args.size} bytes to/from a server on 127.0.0.1; median of {args.rounds} rounds")
    print(f"{'':6} {'direction':9} {'floor files/s':>14} {'channel files/s':>16} {'ratio':>7}  (ratio per round)")
    worst = float("inf")
    same_lines = []
    with tempfile.TemporaryDirectory(prefix="botsq-bench-channels-") as tmp:
        for kind in (args.only,) if args.only else ("ftp", "sftp"):
            rounds = bench(kind, n, args.size, args.rounds + 1, args.block, Path(tmp))[1:]   # round 1 warms up
            for direction in ("send", "fetch"):
                # the ratio is taken within each round (floor and channel ran interleaved), then the median
                ratio, spread = ratio_of(rounds, f"floor_{direction}", f"chan_{direction}")
                floor = n / statistics.median(r[f"floor_{direction}"] for r in rounds)
                chan = n / statistics.median(r[f"chan_{direction}"] for r in rounds)
                worst = min(worst, ratio)
                print(f"{kind:6} {direction:9} {floor:14.0f} {chan:16.0f} {ratio:7.0%}  ({spread})")
            same = n / statistics.median(r["same_send"] for r in rounds)
            cost, cost_spread = ratio_of(rounds, "floor_send", "same_send")
            own, own_spread = ratio_of(rounds, "same_send", "chan_send")
            same_lines.append(f"{kind:6} {same:14.0f} {cost:15.0%}  ({cost_spread})  {own:13.0%}  ({own_spread})")
    print(f"\nsends, the bare library making the channel's round trips (same trips):")
    print(f"{'':6} {'files/s':>14} {'floor/same':>15}  (per round)  {'same/channel':>13}  (per round)")
    print("\n".join(same_lines))
    print(f"worst median ratio {worst:.0%} (goal >= 70%)")
    if args.trips and args.only != "sftp":
        with tempfile.TemporaryDirectory(prefix="botsq-bench-trips-") as tmp:
            time_commands(Path(tmp), args.size)
    return 0 if worst >= 0.7 else 1


def ratio_of(rounds: list[dict[str, float]], faster: str, slower: str) -> tuple[float, str]:
    """The median over the rounds of ``faster``'s time / ``slower``'s time (a throughput ratio), and
    the ratios of the rounds, sorted, as text."""
    ratios = sorted(r[faster] / r[slower] for r in rounds)
    return statistics.median(ratios), ", ".join(f"{x:.0%}" for x in ratios)


def time_commands(work: Path, size: int, times: int = 2000) -> None:
    """Each FTP command of a send on its own, ``times`` times in turn over one connection to the
    bench's server: the median milliseconds from sending it to its reply."""
    wait_for_free_ports()
    (work / "box").mkdir()
    ctx = mp.get_context("spawn")
    port_q, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=serve, args=("ftp", str(work), port_q, stop), daemon=True)
    proc.start()
    port = port_q.get(timeout=30)
    ftp = FtpFloor(port).ftp
    data = os.urandom(size)
    took: dict[str, list[float]] = {k: [] for k in ("NOOP", "TYPE I", "PASV", "STOR to 150", "data to 226",
                                                     "SIZE", "RNFR", "RNTO")}

    def timed(key: str, call: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        resp = call()
        took[key].append(time.perf_counter() - t0)
        return resp

    try:
        for i in range(times):
            timed("NOOP", lambda: ftp.voidcmd("NOOP"))
            timed("TYPE I", lambda: ftp.voidcmd("TYPE I"))
            host, dport = timed("PASV", ftp.makepasv)
            with socket.create_connection((host, dport)) as conn:
                timed("STOR to 150", lambda: ftp.sendcmd(f"STOR .t{i}.part"))
                t0 = time.perf_counter()
                conn.sendall(data)
            ftp.voidresp()
            took["data to 226"].append(time.perf_counter() - t0)
            timed("SIZE", lambda: ftp.sendcmd(f"SIZE .t{i}.part"))
            timed("RNFR", lambda: ftp.sendcmd(f"RNFR .t{i}.part"))
            timed("RNTO", lambda: ftp.voidcmd(f"RNTO t{i}"))
        ftp.quit()
    finally:
        stop.set()
        proc.join(10)
    ms = {k: statistics.median(v) * 1e3 for k, v in took.items()}
    print(f"\nFTP commands on their own, median of {times} (ms from the command to its reply):")
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items()))
    transfer = ms["PASV"] + ms["STOR to 150"] + ms["data to 226"]
    floor, same = ms["TYPE I"] + transfer, transfer + ms["SIZE"] + ms["RNFR"] + ms["RNTO"]
    print(f"  per file: the floor's TYPE I + PASV + STOR + data {floor:.3f} ms; the channel's PASV + STOR + data + "
          f"SIZE + RNFR + RNTO {same:.3f} ms; floor / channel at best {floor / same:.0%}")


if __name__ == "__main__":
    sys.exit(main())
