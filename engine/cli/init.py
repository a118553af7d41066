"""``botsq init DIR [--demo]``: write a working environment.

DIR gets ``config/bots.ini``, ``config/routes.toml``, ``botssys/``, ``usersys/mappings/`` and
the data folders the routes use. ``--demo`` adds sample routes (a mapping route and a
passthrough route), the sample mapping and sample incoming files. Existing files are never
overwritten (``--force`` replaces the config files).
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from engine.errors import UsageError


TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _copy(src: Path, dst: Path, force: bool, written: list[Path]) -> None:
    if dst.exists() and not force:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    written.append(dst)


def init_environment(target: Path, demo: bool, force: bool = False,
                     written: list[Path] | None = None) -> Path:
    """Write an environment in ``target``; returns its config dir. ``written`` (when given) gets the
    files written: an existing file is kept unless ``force``."""
    target = Path(os.path.expanduser(target)).absolute()
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target}: exists and is not a folder")
    configdir = target / "config"
    written = [] if written is None else written
    try:
        configdir.mkdir(parents=True, exist_ok=True)
        _copy(TEMPLATES / "bots.ini", configdir / "bots.ini", force, written)
        _copy(TEMPLATES / ("routes_demo.toml" if demo else "routes.toml"), configdir / "routes.toml", force, written)
        for sub in ("botssys", "usersys/mappings"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        if demo:
            for src in sorted((TEMPLATES / "usersys" / "mappings").glob("*.py")):
                _copy(src, target / "usersys" / "mappings" / src.name, force, written)
            for src in sorted((TEMPLATES / "incoming").rglob("*")):
                if src.is_file():
                    rel = src.relative_to(TEMPLATES / "incoming")
                    _copy(src, target / "data" / "in" / rel, True, written)
            for sub in ("data/out/orders", "data/out/invoices"):
                (target / sub).mkdir(parents=True, exist_ok=True)
        else:
            for sub in ("data/in", "data/out"):
                (target / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{target}: cannot write the environment: {exc.strerror or exc}") from None
    return configdir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="folder for the environment (created if missing)")
    parser.add_argument("--demo", action="store_true", help="add sample routes, a sample mapping and sample files")
    parser.add_argument("--force", action="store_true", help="overwrite existing config files")


def run(args: argparse.Namespace) -> int:
    written: list[Path] = []
    configdir = init_environment(Path(args.dir), demo=args.demo, force=args.force, written=written)
    if written:
        print(f"environment written: {configdir.parent} ({len(written)} file(s) written)")
    else:
        print(f"environment kept: {configdir.parent} (its files exist; --force overwrites them)")
    print(f"  config dir: {configdir}")
    print(f"  run the engine: bots-engine -c {shlex.quote(str(configdir))}")
    sys.stdout.flush()
    return 0
