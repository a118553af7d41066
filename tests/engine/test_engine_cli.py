"""``bots-engine`` as users and schedulers call it: exit codes 0/1/2/3 and one-line errors."""
from __future__ import annotations

import os
import pytest

from conftest import DEFAULT_INI, DEFAULT_ROUTES, bin_path

ROUTES = DEFAULT_ROUTES


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.procs
def test_ok_run_prints_summary_and_exit_0(make_env, db_ini):
    env = make_env(ini=DEFAULT_INI + db_ini)
    env.drop("data/in/order 1.edi", "UNA")
    env.path("data/out").mkdir(parents=True)
    r = env.run()
    assert r.returncode == 0, r.stderr
    assert "1 received, 1 processed, 1 sent" in r.stdout
    assert env.path("data/out/order 1.edi").read_text() == "UNA"
    log = env.path("botssys/logging/engine.log").read_text()
    assert "1 received, 1 processed, 1 sent" in log


@pytest.mark.procs
def test_errors_give_exit_2(make_env):
    env = make_env()
    env.drop("data/in/a", "A")                       # data/out is missing: communication error
    r = env.run()
    assert r.returncode == 2, r.stderr
    assert "1 communication error" in r.stdout


@pytest.mark.procs
def test_bots_style_config_flag_and_routes(make_env):
    env = make_env()
    env.drop("data/in/a", "A")
    env.path("data/out").mkdir(parents=True)
    import subprocess
    r = subprocess.run([bin_path("bots-engine"), "--new", f"-C{env.configdir}", "r1"], capture_output=True,
                       text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    r = subprocess.run([bin_path("bots-engine")], capture_output=True, text=True, cwd=env.root,
                       env={**os.environ, "BOTSQ_CONFIG": str(env.configdir)})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("ini,routes,expect", [
    ("[settings]\nmaxruntime = soon\n", ROUTES, r"bots.ini: \[settings\] maxruntime: expected a whole number"),
    (DEFAULT_INI, ROUTES.replace('type = "file"\npath = "data/in"', 'type = "gopher"\npath = "data/in"'),
     r"routes.toml: channels.in.type: unknown channel type 'gopher'"),
    (DEFAULT_INI, ROUTES.replace('tochannel = "out"', 'tochannel = "nowhere"'),
     r"routes.toml: routes.r1.parts\[1\].tochannel: no channel named 'nowhere'"),
    (DEFAULT_INI, ROUTES.replace("remove = true", 'remove = "yes"'),
     r"routes.toml: channels.in.remove: expected true or false"),
    ("[settings\nmaxruntime = 1\n", ROUTES, r"bots.ini: syntax error"),
    (DEFAULT_INI, ROUTES + "\n[routes.broken\n", r"routes.toml: syntax error"),
    (DEFAULT_INI, ROUTES.replace('filename = "{infile}"', 'filename = "{infile}_{partner}"'),
     r"routes.toml: channels.out.filename: unknown placeholder \{partner\}"),
    (DEFAULT_INI, ROUTES.replace('filename = "{infile}"', 'filename = "sub/{infile}"'),
     r"routes.toml: channels.out.filename: expected a file name without a folder .*got 'sub/\{infile\}'"),
    (DEFAULT_INI, ROUTES.replace('tochannel = "out"', 'tochannel = "in"'),
     r"routes.toml: routes.r1.parts\[1\].tochannel: 'in' is the part's own fromchannel"),
], ids=["wrong-key-type", "unknown-channel-type", "missing-channel", "wrong-toml-type", "ini-syntax",
        "toml-syntax", "unknown-placeholder", "filename-with-folder", "tochannel-is-fromchannel"])
@pytest.mark.procs
def test_config_errors_exit_1_with_one_line_naming_file_and_key(make_env, ini, routes, expect):
    import re
    env = make_env(ini=ini, routes=routes)
    r = env.run()
    assert r.returncode == 1, (r.stdout, r.stderr)
    line = _one_line(r.stderr)
    assert line.startswith("bots-engine: error: ") and re.search(expect, line), line
    assert "Traceback" not in r.stderr


@pytest.mark.procs
def test_missing_config_dir_exit_1(tmp_path):
    import subprocess
    r = subprocess.run([bin_path("bots-engine"), "-c", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 1
    assert "config dir does not exist" in _one_line(r.stderr) and str(tmp_path / "nope") in r.stderr


@pytest.mark.procs
def test_unknown_route_and_bad_option_exit_1(make_env):
    env = make_env()
    r = env.run("nosuchroute")
    assert r.returncode == 1 and "unknown route 'nosuchroute'" in _one_line(r.stderr)
    r = env.run("--neww")
    assert r.returncode == 1 and "unrecognized arguments: --neww" in _one_line(r.stderr)


@pytest.mark.procs
def test_unreachable_database_exit_1_with_masked_url(make_env):
    env = make_env(ini=DEFAULT_INI + "\n[database]\nurl = postgresql+psycopg://bots:Sup3rS3cret@127.0.0.1:1/bots\n")
    r = env.run()
    assert r.returncode == 1
    line = _one_line(r.stderr)
    assert "postgresql+psycopg://bots:***@127.0.0.1:1/bots" in line
    assert "Sup3rS3cret" not in r.stderr + r.stdout
    log = env.path("botssys/logging/engine.log")
    assert not log.exists() or "Sup3rS3cret" not in log.read_text()


@pytest.mark.procs
def test_database_driver_not_installed_exit_1_with_masked_url(make_env):
    env = make_env(ini=DEFAULT_INI + "\n[database]\nurl = mysql://bots:Sup3rS3cret@127.0.0.1/bots\n")
    r = env.run()
    assert r.returncode == 1
    line = _one_line(r.stderr)
    assert "database mysql://bots:***@127.0.0.1/bots cannot be used: its database driver is not installed" in line
    assert "Sup3rS3cret" not in r.stderr + r.stdout and "Traceback" not in r.stderr


@pytest.mark.procs
def test_database_file_in_missing_folder_is_created(make_env):
    env = make_env(ini=DEFAULT_INI + "\n[database]\nurl = sqlite:///db/deeper/still/bots.sqlite\n")
    env.path("data/in").mkdir(parents=True)
    r = env.run()
    assert r.returncode == 0, r.stderr
    assert env.path("db/deeper/still/bots.sqlite").is_file()


@pytest.mark.procs
def test_database_file_in_unwritable_folder_exit_1(make_env):
    env = make_env(ini=DEFAULT_INI + "\n[database]\nurl = sqlite:///afile/sub/bots.sqlite\n")
    env.drop("afile", "a regular file: nothing can be created below it, not even by root")
    r = env.run()
    assert r.returncode == 1
    line = _one_line(r.stderr)
    assert "database sqlite:///" in line and "afile/sub/bots.sqlite" in line and "damaged" not in line


@pytest.mark.procs
def test_password_never_in_logs(make_env, monkeypatch):
    env = make_env(ini=DEFAULT_INI.replace("[settings]\n", "[settings]\nsendreportiferror = True\n")
                   + "\n[email]\nhost = 127.0.0.1\nport = 1\npassword = ${SMTP_PASSWORD}\n"
                   "user = bots\nmanagers = ops@example.com\n", routes=ROUTES)
    env.drop("data/in/a", "A")                                   # no data/out: an error, so a report is tried
    r = env.run(env={"SMTP_PASSWORD": "Hunter2Hunter2"})
    assert r.returncode == 2
    text = r.stdout + r.stderr + env.path("botssys/logging/engine.log").read_text()
    assert "could not send report" in text
    assert "Hunter2Hunter2" not in text


def test_progress_bar_only_on_a_terminal(make_env):
    from engine.progress import ProgressBar
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = ProgressBar(out, delay=0)
    bar(dict(route="r1", part=1, files_done=5, files_total=10, phase="receive"))
    bar.finish()
    assert "receive r1 part 1 [" in out.getvalue() and "5/10" in out.getvalue()
    plain = io.StringIO()
    bar = ProgressBar(plain, delay=0)
    bar(dict(route="r1", part=1, files_done=5, files_total=10, phase="receive"))
    assert plain.getvalue() == ""
    # a short run on a terminal shows nothing either (delay)
    out2 = Tty()
    ProgressBar(out2, delay=60)(dict(files_done=1, files_total=2, phase="receive"))
    assert out2.getvalue() == ""


def _run_on_a_terminal(env, timeout: float = 60) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """bots-engine with stdout and stderr on a pseudo-terminal, as a user at a shell sees it."""
    import pty
    import subprocess
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen([bin_path("bots-engine"), "-c", str(env.configdir)], cwd=env.root, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            try:
                data = os.read(master, 65536)
            except OSError:             # EIO: the terminal's other side is closed (the engine exited)
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")


@pytest.mark.procs
def test_progress_bar_shown_by_bots_engine_on_a_terminal_for_a_long_run(make_env):
    routes = ROUTES.replace('translate = "passthrough"', 'translate = "slow.convert"')
    env = make_env(routes=routes)
    env.drop("usersys/mappings/slow.py", "import time\ndef convert(content, meta):\n    time.sleep(0.012)\n"
                                         "    return content\n")
    for n in range(300):                       # ~3.6 s: longer than the bar's 2 s delay
        env.drop(f"data/in/f{n:03}.edi", f"file {n}")
    env.path("data/out").mkdir(parents=True)
    code, out = _run_on_a_terminal(env)
    assert code == 0, out
    import re
    assert re.search(r"(receive|process) r1 part 1 \[[#.]+\] \d+/300", out), out
    summary = "run 1: 300 received, 300 processed, 300 sent"
    assert summary in out
    # the bar is cleared before log lines and the summary: each starts on a line of its own
    for line in out.replace("\r\n", "\n").split("\n"):
        if "INFO" in line or summary in line:
            assert line.split("\r")[-1].startswith(("20", "run 1:")), repr(line)
    # not a terminal (cron, Celery): no bar at all
    for n in range(3):
        env.drop(f"data/in/g{n}.edi", "g")
    r = env.run()
    assert r.returncode == 0 and "\r" not in r.stdout + r.stderr and "[" not in r.stdout


@pytest.mark.procs
def test_missing_routes_toml_is_said_not_silent(make_env):
    env = make_env(routes=None)                     # a config dir with bots.ini only (a wrong -c, a lost file)
    r = env.run()
    assert r.returncode == 0, r.stderr
    assert f"no routes in {env.configdir / 'routes.toml'} (the file does not exist)" in r.stderr
