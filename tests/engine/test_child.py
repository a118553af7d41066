"""engine.child.start_tied: a child that dies with the thread that started it, through setpriv or the prctl hook."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.procs

from engine import child

READ_PDEATHSIG = ("import ctypes; v = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v)); "
                  "print(v.value)")                                  # PR_GET_PDEATHSIG


@pytest.mark.parametrize("setpriv", [True, False], ids=["setpriv", "preexec"])
def test_child_gets_sigterm_as_its_parent_death_signal(monkeypatch: pytest.MonkeyPatch, setpriv: bool) -> None:
    if setpriv and child._setpriv() is None:
        pytest.skip("util-linux setpriv with --pdeathsig is not installed")
    if not setpriv:
        monkeypatch.setattr(child, "_setpriv", lambda: None)
    proc = child.start_tied([sys.executable, "-c", READ_PDEATHSIG], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.strip() == "15"                                        # SIGTERM


def test_a_program_that_cannot_start_is_an_oserror_naming_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as e:
        child.start_tied(["no-such-program-botsq"])
    assert e.value.filename == "no-such-program-botsq"
    script = tmp_path / "engine.sh"
    script.write_text("#!/bin/sh\nexit 0\n")                          # not executable
    with pytest.raises(PermissionError):
        child.start_tied(["./engine.sh"], cwd=tmp_path)
    script.chmod(0o755)
    assert child.start_tied(["./engine.sh"], cwd=tmp_path).wait(timeout=30) == 0
