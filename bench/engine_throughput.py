#!/usr/bin/env python3
"""Engine throughput: N files of SIZE bytes through file -> passthrough -> file in one run (SQLite).

Compared, in the same script and on the same disk, with two floors: the plain floor, a Python loop
that only copies each file to an archive folder and to the output folder; and the durable floor
(issue 9), the same loop that also flushes the file system once per 250 archived files before
removing their sources, the least any engine that loses nothing must do. All are timed until
their data is on disk (a final sync), rounds alternated; the ratio engine / durable floor is taken
within each round, then the median (goal >= 0.8), with the engine's peak RSS (goal < 150 MB).
The files wait in the in-folder since before the run (mtime a minute back), as a scheduled run
finds them; what readiness (``settle``) adds is measured apart: a run over files that have just
arrived (it waits for them once) and the same run with ``settle = 0``. With ``--big N`` it also
runs N files and compares the rate of the first and the last 10 % of them (the time per file must
not grow with the number of files already in the database).

    .venv/bin/python bench/engine_throughput.py                 # 10,000 files, then 100,000
    .venv/bin/python bench/engine_throughput.py --files 2000 --big 0
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

ROUTES = """
[channels.in]
type = "file"
path = "data/in"
filemask = "*.edi"
remove = true

[channels.out]
type = "file"
path = "data/out"
filename = "{infile}"

[routes.bench]
[[routes.bench.parts]]
fromchannel = "in"
translate = "passthrough"
tochannel = "out"
"""

INI = """
[settings]
whencleanup = never
maxfilesizeincoming = 100000000

[jobqueue]
enabled = False
"""

# Runs in a child process so its peak RSS is the engine's alone.
CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[2])
import contextlib
import engine.run.context as context_mod
from engine.config import load_config
from engine.run import run_engine
from engine.run.tracking import Tracker
context_mod.PROGRESS_EVERY = 0.0
marks = []
db = [0.0]
real_tx = Tracker.tx
@contextlib.contextmanager
def timed_tx(self):
    t = time.perf_counter()
    with real_tx(self) as conn:
        yield conn
    db[0] += time.perf_counter() - t
Tracker.tx = timed_tx
journal = [0.0]
real_journal = getattr(Tracker, "journal", None)
def timed_journal(self, out, run_id):
    t = time.perf_counter()
    real_journal(self, out, run_id)
    dt = time.perf_counter() - t
    journal[0] += dt
    db[0] += dt
if real_journal is not None:     # the deliveries journal (one commit per delivered file)
    Tracker.journal = timed_journal
def progress(info):
    if info.get("phase") == "receive" and info.get("files_total"):
        marks.append((time.perf_counter(), info["files_done"], db[0]))
cfg = load_config(sys.argv[1])
t0 = time.perf_counter()
res = run_engine(cfg, ["new"], progress=progress)
os.sync()
elapsed = time.perf_counter() - t0
print(json.dumps(dict(elapsed=elapsed, t0=t0, exit_code=res.exit_code, counts=res.counts, marks=marks,
                      journal=journal[0],
                      maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
"""


def make_files(folder: Path, n: int, size: int, fresh: bool = False) -> None:
    """N files; unless ``fresh``, with their mtime a minute back (waiting since before the run)."""
    folder.mkdir(parents=True, exist_ok=True)
    block = (b"UNB+UNOC:3+SENDER+RECEIVER+251126:0900+1'" * (size // 40 + 1))[:size]
    then = time.time() - 60
    for i in range(n):
        path = folder / f"f{i:07d}.edi"
        path.write_bytes(block)
        if not fresh:
            os.utime(path, (then, then))


def folders(root: Path, n: int, size: int) -> tuple[Path, Path, Path]:
    """A floor's in-folder with N files, its empty archive and out folders, all on disk."""
    src, arch, out = root / "in", root / "archive", root / "out"
    make_files(src, n, size)
    arch.mkdir()
    out.mkdir()
    os.sync()
    return src, arch, out


def durable_floor(root: Path, n: int, size: int, batch: int = 250) -> float:
    """The plain floor plus one file-system flush per ``batch`` archived files, then their sources removed."""
    from engine.run.archive import syncfs         # the engine's own flush (syncfs(2) of that file system)

    src, arch, out = folders(root, n, size)
    t0 = time.perf_counter()
    entries = list(os.scandir(src))
    for start in range(0, len(entries), batch):
        chunk = entries[start:start + batch]
        for entry in chunk:
            shutil.copyfile(entry.path, arch / entry.name)
        syncfs(arch)                            # archived copies on disk before any source goes
        for entry in chunk:
            os.unlink(entry.path)
            shutil.copyfile(arch / entry.name, out / entry.name)
    os.sync()
    elapsed = time.perf_counter() - t0
    shutil.rmtree(root, ignore_errors=True)
    return n / elapsed


def floor(root: Path, n: int, size: int, marks: list | None = None) -> float:
    """A plain loop doing the same disk work: copy each file to an archive folder and the out folder."""
    src, arch, out = folders(root, n, size)
    t0 = time.perf_counter()
    if marks is not None:
        marks.append((t0, 0))
    for i, entry in enumerate(os.scandir(src), 1):
        shutil.copyfile(entry.path, arch / entry.name)
        shutil.copyfile(entry.path, out / entry.name)
        if marks is not None and i % 250 == 0:
            marks.append((time.perf_counter(), i))
    os.sync()                                   # the same "on disk" end point as the engine's
    elapsed = time.perf_counter() - t0
    if marks is not None:
        marks.append((time.perf_counter(), n))
    shutil.rmtree(root, ignore_errors=True)
    return n / elapsed


def engine(root: Path, n: int, size: int, fresh: bool = False, settle: float | None = None) -> dict:
    (root / "config").mkdir(parents=True)
    (root / "config" / "bots.ini").write_text(INI)
    routes = ROUTES if settle is None else ROUTES.replace('remove = true', f'remove = true\nsettle = {settle}')
    (root / "config" / "routes.toml").write_text(routes)
    make_files(root / "data" / "in", n, size, fresh)
    (root / "data" / "out").mkdir(parents=True)
    os.sync()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root / "config"), str(REPO)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"engine child failed:\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    sent = data["counts"]["sent"]
    if sent != n or len(os.listdir(root / "data" / "out")) != n:
        sys.exit(f"engine sent {sent} of {n} files")
    data["rate"] = n / data["elapsed"]
    shutil.rmtree(root, ignore_errors=True)
    return data


def tenth_rates(marks: list[tuple[float, int]], n: int) -> tuple[float, float]:
    """files/s over the first and the last 10 % of the files, from (time, files done) marks."""
    tenth = n // 10

    def time_at(done: int) -> float:
        for (t1, d1), (t2, d2) in zip(marks, marks[1:]):
            if d1 <= done <= d2 and d2 > d1:
                return t1 + (t2 - t1) * (done - d1) / (d2 - d1)
        return marks[-1][0]

    first = tenth / (time_at(tenth) - time_at(0))
    last = tenth / (time_at(n) - time_at(n - tenth))
    return first, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000, help="files in the floor/engine comparison (default 10000)")
    ap.add_argument("--size", type=int, default=2048, help="bytes per file (default 2048)")
    ap.add_argument("--big", type=int, default=100_000, help="files in the growth run (default 100000; 0 skips)")
    ap.add_argument("--rounds", type=int, default=3, help="floor/engine rounds, medians reported (default 3)")
    ap.add_argument("--settle-files", type=int, default=200,
                    help="files in the runs measuring what settle adds (default 200; 0 skips)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary folder, removed afterwards)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="botsq-bench-", dir=args.dir))
    try:
        print(f"engine throughput: {args.files} files of {args.size} bytes, file -> passthrough -> file, SQLite, "
              f"{args.rounds} round(s), floor, durable floor and engine alternating")
        floors, durables, engines = [], [], []
        for r in range(args.rounds):
            floors.append(floor(base / f"floor{r}", args.files, args.size))
            durables.append(durable_floor(base / f"durable{r}", args.files, args.size))
            engines.append(engine(base / f"engine{r}", args.files, args.size))
            print(f"  round {r + 1}: floor {floors[-1]:6.0f} files/s, durable floor {durables[-1]:6.0f} files/s, "
                  f"engine {engines[-1]['rate']:6.0f} files/s, engine/durable {engines[-1]['rate'] / durables[-1]:.0%}")
        f = statistics.median(floors)
        d = statistics.median(durables)
        e = statistics.median(x["rate"] for x in engines)
        ratio = statistics.median(x["rate"] / y for x, y in zip(engines, durables))
        rss = max(x["maxrss_kb"] for x in engines) / 1024
        print(f"  floor (copy to archive + out):  {f:8.0f} files/s (median)")
        print(f"  durable floor (+ flush per 250): {d:7.0f} files/s (median)")
        print(f"  engine run:                     {e:8.0f} files/s (median)")
        print(f"  ratio engine/durable floor:     {ratio:8.0%}   (median of the rounds' ratios; goal >= 80%)")
        print(f"  ratio engine/plain floor:       {e / f:8.0%}")
        print(f"  engine peak RSS:                {rss:8.1f} MB   (goal < 150 MB)")
        jms = statistics.median(x["journal"] / args.files * 1000 for x in engines)
        print(f"  deliveries journal:             {jms:8.3f} ms per file (median; inside the engine's time)")
        if args.settle_files:
            n = args.settle_files
            waits, offs = [], []
            for r in range(args.rounds):
                waits.append(engine(base / f"fresh{r}", n, args.size, fresh=True)["elapsed"])
                offs.append(engine(base / f"off{r}", n, args.size, fresh=True, settle=0)["elapsed"])
            w, o = statistics.median(waits), statistics.median(offs)
            print(f"settle: {n} files that have just arrived, default settle: {w:.2f} s per run; settle = 0: "
                  f"{o:.2f} s; readiness adds {w - o:.2f} s (median of {args.rounds})")
        if args.big:
            b = engine(base / "big", args.big, args.size)
            first, last = tenth_rates([(b["t0"], 0)] + [(t, d) for t, d, _total in b["marks"]], args.big)
            print(f"growth: {args.big} files in one run: {b['rate']:.0f} files/s overall ({b['elapsed']:.1f} s), "
                  f"peak RSS {b['maxrss_kb'] / 1024:.1f} MB")
            print(f"  engine first 10%: {first:6.0f} files/s   last 10%: {last:6.0f} files/s   "
                  f"last/first: {last / first:.0%}")
            dfirst, dlast = tenth_rates([(0.0, 0)] + [(dbt, d) for _t, d, dbt in b["marks"]], args.big)
            print(f"  database work only: first 10% {1000 / dfirst:.3f} ms/file, last 10% {1000 / dlast:.3f} ms/file "
                  f"(commits of records, {args.big} rows already in the tables at the end)")
            fmarks: list = []
            floor(base / "bigfloor", args.big, args.size, fmarks)
            ffirst, flast = tenth_rates(fmarks, args.big)
            print(f"  floor  first 10%: {ffirst:6.0f} files/s   last 10%: {flast:6.0f} files/s   "
                  f"last/first: {flast / ffirst:.0%}   (the same folders growing, no database)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
