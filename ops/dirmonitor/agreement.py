"""The directory monitor and the file channel agree on what a file is.

A ``[dirmonitorN]`` section queues jobs for the routes it names (none: the default run); what those
jobs take in the watched folder are the files of the routes' ``file`` in-channels whose ``path`` is
that folder. So a file counts for the monitor only when the channel would read it - the one rule
of :func:`engine.channels.file.holds` (directly in the folder, not a dot-name, the channel's
``filemask``) - and also matches the section's own ``filemask``. At start:

* ``recursive = True`` is refused (one line, exit 1): the file channel never reads sub-folders,
  so a file there would queue a job that takes nothing, and the file would wait for ever;
* a section whose folder no in-channel of its routes reads, and a section whose ``filemask``
  differs from such a channel's, are warned about (one line each): a narrower monitor mask is a
  choice (only some files start a run at once), so it is not refused.

With ``[engine] kind = bots`` the channels are Bots' (in Bots' database): none of this applies, and
the section is read as Bots reads it - ``recursive = True`` counts files in sub-folders too.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from engine.channels.file import holds, takes
from engine.config import Config, DirMonitor
from engine.errors import UsageError
from engine.run.selection import select_routes


@dataclass(frozen=True)
class FolderReaders:
    """The file in-channels that read a monitored folder: channel name -> its filemask."""
    masks: dict[str, str]
    recursive: bool = False     # files in sub-folders count too (kind = bots, a section's recursive = True)

    def counts(self, root: str, path: str, monitor_mask: str) -> bool:
        """Does a file at ``path`` count for a monitor of folder ``root`` (a real path)? The section's
        mask, and the rule of a channel that reads the folder (with no such channel, the section's)."""
        if self.recursive:
            parent, name = os.path.split(path)
            return (parent == root or parent.startswith(root + os.sep)) and takes(name, monitor_mask)
        if not holds(root, path, monitor_mask):
            return False
        name = os.path.basename(path)
        return not self.masks or any(takes(name, mask) for mask in self.masks.values())


def readers(cfg: Config, mon: DirMonitor) -> FolderReaders:
    """The file in-channels of the section's routes (its ``route``, else the default run's) reading its folder."""
    folder = os.path.realpath(mon.path)
    masks: dict[str, str] = {}
    for route in select_routes(cfg, ["new"], [mon.route] if mon.route else []):
        for part in route.parts:
            spec = cfg.channels.get(part.fromchannel)
            if spec is None or spec.type != "file" or not spec.get("path"):
                continue
            if os.path.realpath(cfg.resolve(spec.get("path"))) == folder:
                masks[part.fromchannel] = spec.get("filemask") or "*"
    return FolderReaders(masks)


def check(cfg: Config, log: logging.Logger | None = None) -> dict[str, FolderReaders]:
    """Each section's readers (by section name); UsageError (one line) for ``recursive = True`` with
    the built-in engine; the warnings of the module doc go to ``log``."""
    out: dict[str, FolderReaders] = {}
    for mon in cfg.dirmonitors:
        if cfg.engine.is_bots:                      # Bots' channels: the section as Bots reads it
            out[mon.name] = FolderReaders({}, recursive=mon.recursive)
            continue
        if mon.recursive:
            raise UsageError(f"{cfg.ini_path}: [{mon.name}] recursive: the file channel reads only its own folder, "
                             "never sub-folders, so a file there would queue a job that takes nothing; set "
                             "recursive = False (one [dirmonitorN] per folder a channel reads)")
        found = readers(cfg, mon)
        out[mon.name] = found
        if log is None:
            continue
        whose = f"route {mon.route}" if mon.route else "the default run"
        if not found.masks:
            log.warning("[%s] no file in-channel of %s reads %s: the jobs it queues take nothing from there",
                        mon.name, whose, mon.path)
        for channel, mask in sorted(found.masks.items()):
            if mask != mon.filemask:
                log.warning("[%s] filemask %r differs from channel %s's filemask %r: a file counts only when "
                            "both match (the channel reads only its own)", mon.name, mon.filemask, channel, mask)
    return out
