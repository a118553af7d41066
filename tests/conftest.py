"""Shared fixtures: environments on disk, and real brokers/databases isolated per test run.

Each test session gets its own RabbitMQ vhost, its own Redis key prefix database and its
own PostgreSQL database, so concurrent runs (and developers) never see each other's data.

Two tiers. A test that uses a real service (a fixture of SERVICE_FIXTURES, the PostgreSQL side of
``db_kind``, or a ``rabbitmq``/``redis``/``postgres`` mark) is marked ``services`` here; a test that starts a process (a command, a
worker, a server, ``multiprocessing``) is marked ``procs`` in its module. The rest is the fast
tier, ``make test-fast`` (``-m "not services and not procs"``): no broker, SQLite only, no child
process. A fast-tier test that starts a process fails, naming the mark it lacks.
"""
from __future__ import annotations

import _posixsubprocess
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
RUN_ID = uuid.uuid4().hex[:8]

# A suite started in the background of a non-interactive shell (`make test &`, some CI runners)
# inherits SIGINT ignored, and an ignored signal stays ignored across exec: every child would then
# ignore the Ctrl-C the stop tests send (botsq stack, botsq demo, the supervisor) and hang. A handler
# of our own is reset to the default on exec, so children start with Python's KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a test starts a moment later. Taken below the
    kernel's ephemeral range: a port the kernel picked (bind to port 0) can be handed to any outgoing
    connection on this busy machine - a broker or database client - before the server binds it
    ("Address already in use"); and never the same port twice in one test session."""
    low = max(1024, min(20000, _EPHEMERAL_LOW - 2000))
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(low, _EPHEMERAL_LOW)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}..{_EPHEMERAL_LOW - 1}")


def bin_path(name: str) -> str:
    """A console script of this install (bots-engine, botsq, celery ...)."""
    p = VENV_BIN / name
    return str(p) if p.exists() else name


# --------------------------------------------------------------------------- tiers

SERVICE_FIXTURES = frozenset({"rabbit_url", "module_vhost", "own_vhost", "redis_url", "pg_url"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        postgres = callspec is not None and callspec.params.get("db_kind") == "postgres"
        marked = any(item.get_closest_marker(name) for name in ("rabbitmq", "redis", "postgres"))
        if postgres or marked or SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the fast tier, starting a child process is a mistake of marking: say so."""
    node = request.node
    if node.get_closest_marker("services") or node.get_closest_marker("procs"):
        return

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError(f"{node.nodeid} starts a process: mark it pytest.mark.procs "
                             "(the fast tier starts none)")

    monkeypatch.setattr(_posixsubprocess, "fork_exec", refuse)     # multiprocessing's spawn
    monkeypatch.setattr(subprocess, "_fork_exec", refuse)          # subprocess binds it at import
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)


# --------------------------------------------------------------------------- environments

DEFAULT_INI = """
[settings]
maxruntime = 60
maxdays = 30
whencleanup = never

[jobqueue]
enabled = False
"""

def file_routes(name: str = "r1", translate: str = "passthrough", filemask: str = "*",
                filename: str = "{infile}", inpath: str = "data/in", outpath: str = "data/out") -> str:
    """routes.toml text for one route: file channel ``in`` -> translate -> file channel ``out``."""
    return f"""
[channels.in]
type = "file"
path = "{inpath}"
filemask = "{filemask}"
remove = true

[channels.out]
type = "file"
path = "{outpath}"
filename = "{filename}"

[routes.{name}]
[[routes.{name}.parts]]
fromchannel = "in"
translate = "{translate}"
tochannel = "out"
"""


DEFAULT_ROUTES = file_routes()


def lane_route(name: str, channel: str, lane: str | None = None, translate: str = "passthrough",
               notindefaultrun: bool = False, active: bool = True) -> str:
    """routes.toml text for route ``name`` in ``lane`` (None: no lane key), reading file channel ``channel``
    (folder ``data/<channel>``) into channel ``out``, which the caller defines."""
    lane_line = f'lane = "{lane}"\n' if lane is not None else ""
    return f"""
[channels.{channel}]
type = "file"
path = "data/{channel}"
remove = true

[routes.{name}]
{lane_line}notindefaultrun = {str(notindefaultrun).lower()}
active = {str(active).lower()}
[[routes.{name}.parts]]
fromchannel = "{channel}"
translate = "{translate}"
tochannel = "out"
"""


class Env:
    """An environment folder on disk: config/, botssys/, usersys/, data/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.configdir = root / "config"

    def write(self, ini: str | None = None, routes: str | None = None) -> "Env":
        self.configdir.mkdir(parents=True, exist_ok=True)
        if ini is not None:
            (self.configdir / "bots.ini").write_text(textwrap.dedent(ini), encoding="utf-8")
        elif not (self.configdir / "bots.ini").exists():      # a config dir without one is refused
            (self.configdir / "bots.ini").write_text("", encoding="utf-8")
        if routes is not None:
            (self.configdir / "routes.toml").write_text(textwrap.dedent(routes), encoding="utf-8")
        return self

    def path(self, rel: str) -> Path:
        return self.root / rel

    def drop(self, rel: str, content: bytes | str = b"x", *, fresh: bool = False) -> Path:
        """A complete file, as a partner left it a while ago: its mtime is set a minute back, so an
        engine run takes it at once (readiness waits ``settle`` only for files changed just now).
        ``fresh=True`` keeps the mtime of the write, as for a file that has just arrived."""
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        if not fresh:
            then = time.time() - 60
            os.utime(p, (then, then))
        return p

    def config(self):  # type: ignore[no-untyped-def]
        from engine.config import load_config
        return load_config(self.configdir)

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120,
            cmd: str = "bots-engine") -> subprocess.CompletedProcess[str]:
        """Run a console script of this install against the environment."""
        full_env = {**os.environ, **(env or {})}
        return subprocess.run([bin_path(cmd), "-c", str(self.configdir), *argv], cwd=self.root,
                              env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def make_env(tmp_path: Path) -> Callable[..., Env]:
    """``make_env(ini=..., routes=..., name=...)``: a new environment under tmp_path."""
    count = [0]

    def make(ini: str | None = DEFAULT_INI, routes: str | None = DEFAULT_ROUTES, name: str | None = None) -> Env:
        count[0] += 1
        return Env(tmp_path / (name or f"env{count[0]}")).write(ini, routes)

    return make


# --------------------------------------------------------------------------- real services

def rabbitmqctl(*args: str, attempts: int = 5) -> None:
    """rabbitmqctl, retried: its Erlang distribution start fails now and then under load."""
    import time

    for i in range(attempts):
        proc = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True)
        if proc.returncode == 0:
            return
        time.sleep(1 + i)
    raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")


@contextmanager
def rabbit_vhost(label: str) -> Iterator[str]:
    """A RabbitMQ vhost of the caller's own (no other test's message reaches its workers); its URL."""
    if not port_open("127.0.0.1", 5672):
        pytest.fail("RabbitMQ is not answering on 127.0.0.1:5672 (.ci/run starts it)")
    vhost = f"botsq-test-{RUN_ID}-{label}-{uuid.uuid4().hex[:6]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


@pytest.fixture(scope="session")
def rabbit_url() -> Iterator[str]:
    """A RabbitMQ vhost of this test session's own, deleted afterwards."""
    with rabbit_vhost("session") as url:
        yield url


@pytest.fixture(scope="module")
def module_vhost(request: pytest.FixtureRequest) -> Iterator[str]:
    """A RabbitMQ vhost of one test module's own."""
    with rabbit_vhost(request.module.__name__.rsplit(".", 1)[-1][:20]) as url:
        yield url


@pytest.fixture
def own_vhost(request: pytest.FixtureRequest) -> Iterator[str]:
    """A RabbitMQ vhost of one test's own."""
    with rabbit_vhost(request.node.name[:20]) as url:
        yield url


@contextmanager
def _claimed_redis_db() -> Iterator[int]:
    """A Redis database number (1..15) no other test session on this machine holds: each number is
    claimed with an exclusive lock on a file in the temp dir, released when the session ends (or dies)."""
    import fcntl
    import tempfile

    start = int(RUN_ID, 16) % 15
    for i in range(15):
        db = (start + i) % 15 + 1
        fh = open(Path(tempfile.gettempdir()) / f"botsq-test-redis-db-{db}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        try:
            yield db
        finally:
            fh.close()
        return
    pytest.fail("every Redis database 1..15 is held by another test session on this machine")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number of this session's own (1..15), flushed before and after."""
    if not port_open("127.0.0.1", 6379):
        pytest.fail("Redis is not answering on 127.0.0.1:6379 (.ci/run starts it)")
    import redis

    with _claimed_redis_db() as db:
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        client.flushdb()
        yield f"redis://127.0.0.1:6379/{db}"
        client.flushdb()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this session's own, dropped afterwards."""
    if not port_open("127.0.0.1", 5432):
        pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (.ci/run starts it)")
    import psycopg

    name = f"botsq_test_{RUN_ID}"
    admin = "postgresql://postgres@127.0.0.1:5432/test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    from engine.db import dispose_all
    dispose_all()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def db_kind(request: pytest.FixtureRequest) -> str:
    """Parametrise a test over both supported databases."""
    return request.param


@pytest.fixture
def db_ini(db_kind: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A ``[database]`` section for the db_kind under test (a fresh PostgreSQL schema each time)."""
    if db_kind == "sqlite":
        yield ""
        return
    base = request.getfixturevalue("pg_url")
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(base)
    name = f"{u.database}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{u.database}", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = u.set(database=name).render_as_string(hide_password=False)
    yield f"\n[database]\nurl = {url}\n"
    from engine.db import dispose_all
    dispose_all()
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{u.database}", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
