"""A real Bots installation's engine under botsq (issue 11), through the contract's surface only.

Skipped unless ``BOTSQ_TEST_BOTS_ENGINE`` names a Bots ``bots-engine`` - a path, or an interpreter
and a script (``python2 /opt/bots/bots-engine.py``), exactly what ``[engine] command`` takes.
Bots is not a dependency of botsq and none of its code is in this repository; see README,
"Testing with a real Bots installation".

- ``BOTSQ_TEST_BOTS_CONFIG``: Bots' config dir. Default: where Bots itself looks without ``-c``,
  ``$BOTS_CONFIG_DIR``, else ``~/.bots/env/$BOTSENV/config`` (``BOTSENV`` default ``default``).
- ``BOTSQ_TEST_BOTS_ROUTE``: an active route in Bots' own database whose first part reads a file
  channel and translates EDIFACT ORDERS D96A (EAN008) to a file channel - as the route
  ``myfirstroute`` of Bots' demo plugin "my_first_plugin" does (the default), once activated.

The route's folders and Bots' ``[settings] port`` are read from Bots' own database and bots.ini by
Bots' own interpreter, so the test works with any installation set up that way.

What it proves: a botsq config dir with ``[engine] kind = bots``, ``command`` and ``configdir``
(and no routes.toml) and a real worker on RabbitMQ; ``bots-job2queue bots-engine ROUTE`` makes Bots
translate a file the test drops; then, with Bots' port held by the test (Bots exits 3: "another
engine runs"), a second job is tried, waits, and runs once the port is free; botsq records each try
(``botsq runs --json``). botsq's own ``bots-engine -c DIR`` runs the route directly - also with
Bots' own config dir (a copy) as botsq's, ``[engine]`` added - and a route Bots does not know
(Bots: CRITICAL, exit 0) is exit 1. ``bots-dirmonitor`` with a Bots ``[dirmonitor1]`` section on the
route's in-folder queues the route when the test drops a file there, and Bots translates it.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import Env
from e2e_procs import dirmonitor
from queue_helpers import Worker, botsq, job2queue, wait_for

ENGINE_VAR, CONFIG_VAR, ROUTE_VAR = "BOTSQ_TEST_BOTS_ENGINE", "BOTSQ_TEST_BOTS_CONFIG", "BOTSQ_TEST_BOTS_ROUTE"
BOTS_ENGINE = os.environ.get(ENGINE_VAR, "").strip()

pytestmark = [
    pytest.mark.rabbitmq, pytest.mark.procs, pytest.mark.slow,
    pytest.mark.skipif(not BOTS_ENGINE, reason=f"{ENGINE_VAR} does not name a Bots bots-engine "
                       "(a real Bots installation; README: 'Testing with a real Bots installation')"),
]

# Seconds a real Bots run may take here (Django start, a translation, its cleanup): generous, the
# machine is shared.
RUN_TIMEOUT = 120

# Asks Bots' own interpreter, with Bots' own modules, for the route's channels (paths resolved the
# way Bots resolves them) and the port Bots guards its runs with. Python 2 and 3 alike (Bots 3.x
# sites run Bots on Python 2); botsinit/botslib are the same in Bots 3.2 and 4.
BOTS_QUERY = r'''
import json, logging, sys
from bots import botsglobal, botsinit, botslib
botsinit.generalinit(sys.argv[1])
botsglobal.logger = logging.getLogger("botsq-test")
botsinit.connect()
parts = []
for row in botslib.query("SELECT seq, fromchannel_id, tochannel_id FROM routes "
                         "WHERE idroute=%(route)s AND active=%(active)s ORDER BY seq",
                         {"route": sys.argv[2], "active": True}):
    ends = {}
    for side in ("fromchannel_id", "tochannel_id"):
        for ch in botslib.query("SELECT idchannel, type, path, filename, remove FROM channel "
                                "WHERE idchannel=%(id)s", {"id": row[side]}):
            ends[side[:-3]] = {"id": ch["idchannel"], "type": ch["type"], "path": botslib.join(ch["path"]),
                               "filename": ch["filename"], "remove": bool(ch["remove"])}
    parts.append(ends)
sys.stdout.write(json.dumps({"port": botsglobal.ini.getint("settings", "port", 28081), "parts": parts}) + "\n")
'''


def bots_configdir() -> Path:
    """Bots' config dir: ``BOTSQ_TEST_BOTS_CONFIG``, else where Bots 4 looks when given no ``-c``."""
    given = os.environ.get(CONFIG_VAR) or os.environ.get("BOTS_CONFIG_DIR")
    if given:
        return Path(given).expanduser()
    return Path.home() / ".bots" / "env" / (os.environ.get("BOTSENV") or "default") / "config"


def bots_interpreter(command: str) -> list[str]:
    """The interpreter that runs ``command``: its first word when it has two (``python2 x.py``),
    else the script's ``#!`` line (a console script of Bots' virtualenv)."""
    words = shlex.split(command)
    if len(words) > 1:
        return [words[0]]
    script = shutil.which(words[0]) or words[0]
    with open(script, "rb") as fh:
        first = fh.readline().decode("utf-8", "replace").strip()
    if not first.startswith("#!"):
        pytest.fail(f"{ENGINE_VAR}={command!r}: {script} has no #! line; give the interpreter too "
                    "(e.g. 'python3 /path/bots-engine.py')")
    return shlex.split(first[2:])


def bots_route(command: str, configdir: Path, route: str) -> dict:
    """``{"port": int, "parts": [{"fromchannel": {...}, "tochannel": {...}}, ...]}`` from Bots itself."""
    proc = subprocess.run([*bots_interpreter(command), "-c", BOTS_QUERY, str(configdir), route],
                          capture_output=True, text=True, timeout=120, cwd=configdir.parent)
    if proc.returncode != 0:
        pytest.fail(f"could not read route {route!r} from Bots' database (config dir {configdir}):\n"
                    f"{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def order(tag: str) -> bytes:
    """An EDIFACT ORDERS D96A EAN008 interchange (UNOA: capitals only) with order number ``tag``;
    written for this test. Bots checks it for real (segment count, characters, grammar)."""
    segments = [
        f"UNB+UNOA:3+8712345678906:14+8798765432106:14+261201:0930+{tag[-14:]}",
        "UNH+1+ORDERS:D:96A:UN:EAN008",
        f"BGM+220+{tag}+9",
        "DTM+137:20261201:102",
        "NAD+BY+8712345678906::9",
        "NAD+SU+8798765432106::9",
        "LIN+1++8712345000017:EN",
        "QTY+21:12",
        "UNS+S",
    ]
    segments += [f"UNT+{len(segments)}+1", f"UNZ+1+{tag[-14:]}"]    # UNT counts UNH .. UNT
    return ("'".join(segments) + "'").encode("ascii")


def name_for(filemask: str, tag: str) -> str:
    """A file name Bots' channel ``filemask`` takes, made unique with ``tag``."""
    name = filemask.replace("*", tag, 1).replace("*", "").replace("?", "X")
    return name if name != filemask else tag     # a mask without a wildcard: Bots reads what it names


class BotsSite:
    """Bots' config dir and port, the route's in- and out-folders, and what the test put there
    (removed afterwards)."""

    def __init__(self, configdir: Path, info: dict) -> None:
        self.configdir = configdir
        part = info["parts"][0]
        src, dst = part["fromchannel"], part["tochannel"]
        for ch in (src, dst):
            if ch["type"] != "file" or "{" in ch["path"]:
                pytest.fail(f"channel {ch['id']} must be a file channel with a plain path for this test, "
                            f"not {ch['type']} {ch['path']!r}")
        self.port: int = info["port"]
        self.indir, self.outdir = Path(src["path"]), Path(dst["path"])
        self.inmask = src["filename"] or "*"
        self.removes: bool = src["remove"]
        self.dropped: list[Path] = []
        self.tags: list[str] = []

    def drop_order(self) -> str:
        tag = "BQ" + uuid.uuid4().hex[:12].upper()
        path = self.indir / name_for(self.inmask, tag)
        self.indir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")     # complete when it appears under its name
        tmp.write_bytes(order(tag))
        tmp.rename(path)
        self.dropped.append(path)
        self.tags.append(tag)
        return tag

    def translated(self, tag: str) -> list[Path]:
        """Files in the out-folder that hold order ``tag`` translated (no EDIFACT segment left)."""
        if not self.outdir.is_dir():
            return []
        found = []
        for p in self.outdir.iterdir():
            try:
                data = p.read_bytes() if p.is_file() else b""
            except OSError:
                continue
            if tag.encode() in data and b"UNH+" not in data:
                found.append(p)
        return found

    def cleanup(self) -> None:
        for p in self.dropped:
            p.unlink(missing_ok=True)
        for tag in self.tags:
            for p in self.translated(tag):
                p.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def site(module_vhost: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    configdir = bots_configdir()
    if not (configdir / "bots.ini").is_file():
        pytest.fail(f"no Bots config dir at {configdir} (no bots.ini): set {CONFIG_VAR}")
    route = os.environ.get(ROUTE_VAR) or "myfirstroute"
    info = bots_route(BOTS_ENGINE, configdir, route)
    if not info["parts"]:
        pytest.fail(f"Bots' database at {configdir} has no active route {route!r}: set {ROUTE_VAR}, or "
                    "activate the route (Bots' plugin loader writes routes inactive)")
    bots = BotsSite(configdir, info)
    root = tmp_path_factory.mktemp("bots-real")
    # A botsq config dir of its own: only [engine], [jobqueue] and botsq's settings; no routes.toml.
    env = Env(root).write(textwrap.dedent(f"""
        [settings]
        maxruntime = 10
        whencleanup = never

        [engine]
        kind = bots
        command = {BOTS_ENGINE}
        configdir = {configdir}

        [jobqueue]
        enabled = True
        broker = {module_vhost}
        ; the bots-dirmonitor test's own config dir: a worker runs jobs of the config dirs it lists only
        configdirs = {root / "dm" / "config"}
        """))
    worker = Worker(env, module_vhost).wait_ready()
    try:
        yield SimpleNamespace(env=env, broker=module_vhost, worker=worker, bots=bots, route=route,
                              dmroot=root / "dm")
    finally:
        worker.stop()
        bots.cleanup()


def queue(site: SimpleNamespace) -> None:
    r = job2queue(site.env, site.broker, "bots-engine", site.route)
    assert (r.returncode, r.stdout.strip()) == (0, "OK, job is added to queue"), r.stderr


def runs(site: SimpleNamespace) -> list[dict]:
    """``botsq runs --json``: the runs botsq recorded, newest first."""
    r = botsq(site.env, site.broker, "runs", "--json", "--limit", "100")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def ended_runs(site: SimpleNamespace, after: int) -> list[dict]:
    """Bots engine runs newer than run id ``after`` that have ended, oldest first."""
    return [r for r in reversed(runs(site)) if r["id"] > after and r["ended"] and r["kind"] == "bots"]


def last_id(site: SimpleNamespace) -> int:
    return max((r["id"] for r in runs(site)), default=0)


def test_bots_job2queue_runs_a_bots_route_that_translates_a_file(site: SimpleNamespace) -> None:
    before = last_id(site)
    tag = site.bots.drop_order()
    queue(site)
    done = wait_for(lambda: ended_runs(site, before), RUN_TIMEOUT, "a Bots engine run to end", site.worker)
    run = done[0]
    # Recorded by botsq the way the contract lists them: kind, command line, exit code, Bots' counts.
    assert (run["status"], run["returncode"]) == ("ok", 0), run
    assert run["command_line"].endswith(f" -c{site.bots.configdir} {site.route}"), run["command_line"]
    assert run["received"] >= 1 and run["sent"] >= 1, run
    out = site.bots.translated(tag)
    assert len(out) == 1 and out[0].stat().st_size > 0, f"order {tag} not translated into {site.bots.outdir}"
    if site.bots.removes:
        assert not site.bots.dropped[-1].exists()    # Bots took it (its in-channel removes what it read)


def test_a_job_while_bots_is_locked_waits_and_runs_when_released(site: SimpleNamespace) -> None:
    before = last_id(site)
    # Held by hand the way a running Bots engine holds it: Bots binds [settings] port on 127.0.0.1
    # for the length of a run and exits 3 when it cannot.
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", site.bots.port))
    try:
        tag = site.bots.drop_order()
        queue(site)
        # botsq started Bots, Bots said "locked" (exit 3); recorded, and the job is kept, not failed.
        locked = wait_for(lambda: ended_runs(site, before), RUN_TIMEOUT, "a Bots run that found Bots locked",
                          site.worker)
        assert [(r["status"], r["returncode"]) for r in locked] == [("locked", 3)] * len(locked), locked
        time.sleep(3)     # the job tries again meanwhile, and finds Bots locked again
        assert all(r["returncode"] == 3 for r in ended_runs(site, before))
        assert not site.bots.translated(tag)
        assert site.bots.dropped[-1].exists()    # Bots never started a run: the file waits where it was
    finally:
        holder.close()
    wait_for(lambda: site.bots.translated(tag), RUN_TIMEOUT,
             f"the waiting job to run once Bots' port is free (order {tag})", site.worker)
    final = wait_for(lambda: [r for r in ended_runs(site, before) if r["returncode"] != 3], RUN_TIMEOUT,
                     "the run after the wait to be recorded", site.worker)
    assert [(r["status"], r["returncode"]) for r in final] == [("ok", 0)], final
    assert [r["id"] for r in ended_runs(site, before)] == [final[0]["id"]]      # one record for the wait


def test_botsq_bots_engine_runs_bots_directly_and_a_route_bots_does_not_know_exits_1(site: SimpleNamespace) -> None:
    # For sites whose scheduler calls the engine itself: botsq's bots-engine -c DIR runs Bots the same way.
    tag = site.bots.drop_order()
    r = site.env.run(site.route, timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(site.bots.translated(tag)) == 1
    # Bots itself only logs CRITICAL 'There is no (active) route' and exits 0; botsq makes it an error.
    unknown = f"nosuch{tag.lower()}"
    r = site.env.run(unknown, timeout=RUN_TIMEOUT)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and lines and lines[-1].startswith("bots-engine: error: ") and unknown in lines[-1], \
        r.stderr[-2000:]
    last = runs(site)[0]
    assert (last["status"], last["returncode"], unknown in last["command_line"]) == ("failed", 0, True), last


def test_bots_own_config_dir_with_the_engine_lines_added_is_a_botsq_config_dir(
        site: SimpleNamespace, tmp_path: Path) -> None:
    # README "Running your Bots installation under botsq": botsq reads Bots' own bots.ini, with all of
    # Bots' sections and keys, plus [engine]. A copy, so the installation's own bots.ini is untouched;
    # botsq's records go to a database of the test's own (Bots does not read [database]).
    configdir = tmp_path / "config"
    shutil.copytree(site.bots.configdir, configdir, ignore=shutil.ignore_patterns("__pycache__"))
    with open(configdir / "bots.ini", "a", encoding="utf-8") as ini:
        ini.write(f"\n[engine]\nkind = bots\ncommand = {BOTS_ENGINE}\n\n"
                  f"[database]\nurl = sqlite:///{tmp_path / 'botsq.sqlite'}\n")
    tag = site.bots.drop_order()
    r = Env(tmp_path).run(site.route, timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(site.bots.translated(tag)) == 1


def test_a_bots_dirmonitor_section_queues_the_route_and_bots_translates_the_file(site: SimpleNamespace) -> None:
    # Bots' own [dirmonitorN] keys (path, filemask, recursive, route) on the route's in-folder, in a
    # botsq config dir of its own (no routes.toml): bots-dirmonitor queues the route, the worker runs Bots.
    env = Env(site.dmroot).write(textwrap.dedent(f"""
        [settings]
        maxruntime = 10
        whencleanup = never

        [engine]
        kind = bots
        command = {BOTS_ENGINE}
        configdir = {site.bots.configdir}

        [jobqueue]
        enabled = True
        broker = {site.broker}

        [dirmonitor]
        process_existing = True

        [dirmonitor1]
        path = {site.bots.indir}
        filemask = {site.bots.inmask}
        recursive = False
        route = {site.route}
        """))
    site.bots.indir.mkdir(parents=True, exist_ok=True)
    monitor = dirmonitor(env.root, env.configdir, site.broker)
    try:
        hb = env.root / "botssys" / "dirmonitor.heartbeat"
        wait_for(lambda: hb.exists() and json.loads(hb.read_text())["state"] == "running", 30, "the monitor",
                 monitor)
        tag = site.bots.drop_order()
        wait_for(lambda: site.bots.translated(tag), RUN_TIMEOUT, f"Bots to translate order {tag} the monitor saw",
                 site.worker)
    finally:
        monitor.stop()
    log = (env.root / "botssys" / "logging" / "dirmonitor.log").read_text()
    assert f"route {site.route}: 1 file(s) ready; job" in log, log[-2000:]
