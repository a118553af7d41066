#!/usr/bin/env python3
"""A stand-in for a Bots installation's ``bots-engine`` with Bots' command line
(``[--new|--rereceive|--resend|--automaticretrycommunication|--cleanup] [-c<configdir>] [route ...]``)
and Bots' exit codes, for the tests of ``[engine] kind = bots``. Not Bots: it moves no file.

Every start and end is appended as one JSON line to ``<configdir>/standin.jsonl`` (argv, pid,
times), so tests see what was run, when, and that two never overlapped.

What it does is chosen by route name (several may be given; the first that matches wins):

* ``exit1`` / ``exit2``: prints a line and exits 1 / 2;
* ``slow``: sleeps ``BOTS_STANDIN_SLEEP`` seconds (default 2) with a line every second;
* ``hang``: prints nothing and sleeps forever;
* ``stubborn``: ignores SIGTERM, then hangs (only SIGKILL ends it);
* ``nonutf8``: writes bytes that are not UTF-8;
* ``sigkill``: kills itself with SIGKILL;
* ``secret``: prints the value of ``BOTS_STANDIN_SECRET``;
* a route starting with ``unknown``: Bots 4's ``CRITICAL There is no (active) route "X".``, exit 0;
* otherwise: Bots' report lines with ``BOTS_STANDIN_RECEIVED`` (default 3) files, exit 0.

When the file ``BOTS_STANDIN_LOCKFILE`` names exists it exits 3 at once, printing nothing (Bots
finding its mutex taken). ``BOTS_STANDIN_PORT``: binds 127.0.0.1 at that port for the whole run,
as Bots does with ``[settings] port``, and exits 3 when it is taken (another Bots engine runs).
``BOTS_STANDIN_FAIL_ARG=1``: exits 1 unless it got one ``-c<dir>``.
"""
import json
import os
import signal
import socket
import sys
import time


def record(configdir, event, **more):
    with open(os.path.join(configdir, "standin.jsonl"), "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **more}) + "\n")


def main(argv):
    options = [a for a in argv if a.startswith("--")]
    configdirs = [a[2:] for a in argv if a.startswith("-c") and not a.startswith("--")]
    routes = [a for a in argv if not a.startswith("-")]
    known = {"--new", "--rereceive", "--resend", "--automaticretrycommunication", "--cleanup"}
    bad = [o for o in options if o not in known]
    if bad or len(configdirs) != 1:
        print(f"bots-engine stand-in: bad arguments {argv}", flush=True)
        return 1
    configdir = configdirs[0]
    lockfile = os.environ.get("BOTS_STANDIN_LOCKFILE")
    if lockfile and os.path.exists(lockfile):
        record(configdir, "locked", argv=argv)
        return 3
    port = os.environ.get("BOTS_STANDIN_PORT")
    if port:
        engine_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)    # held until the process ends
        try:
            engine_socket.bind(("127.0.0.1", int(port)))
        except OSError:
            record(configdir, "locked", argv=argv)
            return 3
    record(configdir, "start", argv=argv, options=options, routes=routes)
    print(f"INFO     Run {', '.join(o[2:] for o in options) or 'new'}.", flush=True)
    code = run(routes)
    record(configdir, "end", code=code)
    return code


def report(received):
    print("INFO     Bots Report; type: new, time: 2025-01-01 10:00:00", flush=True)
    print(f"    {received} files received/processed in run.", flush=True)
    if received:
        print(f"    {received - 1} files without errors,", flush=True)
        print("    1 files with errors,", flush=True)
    print(f"    {max(0, received - 1)} files send in run.", flush=True)


def run(routes):
    for route in routes:
        if route == "exit1":
            print("ERROR    a system error in the stand-in", flush=True)
            return 1
        if route == "exit2":
            report(2)
            return 2
        if route == "slow":
            for _ in range(int(float(os.environ.get("BOTS_STANDIN_SLEEP", "2")))):
                print("INFO     working", flush=True)
                time.sleep(1)
            report(1)
            return 0
        if route == "hang":
            while True:
                time.sleep(60)
        if route == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("INFO     ignoring SIGTERM", flush=True)
            while True:
                time.sleep(60)
        if route == "nonutf8":
            sys.stdout.buffer.write(b"INFO     partner name \xff\xfe\xc3 latin-1: caf\xe9\n")
            sys.stdout.flush()
            report(1)
            return 0
        if route == "sigkill":
            print("INFO     about to die", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if route == "secret":
            print(f"INFO     connecting with password {os.environ.get('BOTS_STANDIN_SECRET', '')}", flush=True)
        if route.startswith("unknown"):
            print(f'CRITICAL There is no (active) route "{route}".', flush=True)
            report(0)
            return 0
    report(int(os.environ.get("BOTS_STANDIN_RECEIVED", "3")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
