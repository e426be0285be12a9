"""Build a folder beside its destination and move it into place only once it is complete.

`python -m data.prepare` writes a dataset of many files. A bad input file, a full disk, Ctrl-C or
kill -9 half-way must leave the destination as it was (the previous dataset, or nothing), never a
partial dataset that `load_prepared` would read. No library we use offers an atomic replacement
of a folder (`datasets.save_to_disk` writes in place), so this module does it with renames, which
POSIX makes atomic within one filesystem; every folder below is therefore a sibling of the
destination `NAME`:

1. build in `.NAME.tmp-HOST-PID-TAG`;
2. commit: flush the files to disk (fsync); if `NAME` exists, rename it to `.NAME.old-HOST-PID-TAG`;
   rename the build folder to `NAME`; rename the `.old-` folder to `.NAME.trash-HOST-PID-TAG` and
   delete it.

Killed at any moment, the run leaves `NAME` either the previous complete folder, or the new
complete folder, or (between the two renames of step 2) absent, with the previous complete folder
under `.old-`. The next run for the same destination calls `recover`: it deletes the build and
trash folders of dead processes on this host and renames an `.old-` folder back to `NAME` if `NAME`
is absent. Folders of live processes, or of other hosts (a shared filesystem), are left alone;
readers never look at them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

KINDS = ("tmp", "old", "trash")


@dataclass(frozen=True)
class Sibling:
    """A build, old or trash folder of `destination`, and the process that made it."""

    path: Path
    kind: str
    host: str
    pid: int


def sibling_name(destination: Path, kind: str, host: str, pid: int, tag: str) -> str:
    return f".{destination.name}.{kind}-{host}-{pid}-{tag}"


def find_siblings(destination: str | Path) -> list[Sibling]:
    """The build, old and trash folders of `destination` that exist now (any process, any host)."""
    destination = Path(destination)
    pattern = re.compile(rf"^\.{re.escape(destination.name)}\.({'|'.join(KINDS)})-(.+)-(\d+)-([0-9a-f]{{8}})$")
    try:
        entries = list(destination.parent.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and entry.is_dir():
            found.append(Sibling(entry, match.group(1), match.group(2), int(match.group(3))))
    return sorted(found, key=lambda sibling: sibling.path.name)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (True when it cannot be told: never delete then)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process; anything else: unknown
        return True
    return True


def recover(destination: str | Path) -> list[str]:
    """Clean up after interrupted runs that wrote `destination`; return one line per action taken.

    Build and trash folders of dead processes on this host are deleted; their `.old-` folder (the
    previous complete dataset, moved aside just before an interrupted swap) is renamed back to
    `destination` if `destination` is absent, and deleted otherwise (the swap had completed).
    """
    destination = Path(destination)
    host = socket.gethostname()
    actions = []
    # `old` last: a build folder is never restored, and an old one only where nothing else is.
    for sibling in sorted(find_siblings(destination), key=lambda s: s.kind == "old"):
        if sibling.host != host or process_alive(sibling.pid):
            continue
        if sibling.kind == "old" and not os.path.lexists(destination):
            os.rename(sibling.path, destination)
            actions.append(f"restored {destination} from {sibling.path.name}, left by an interrupted run")
        else:
            _remove(sibling.path)
            actions.append(f"removed {sibling.path.name}, left by an interrupted run")
    return actions


def _fsync(path: Path, directory: bool) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some filesystems cannot fsync a directory; a file must be flushed
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk, so a rename that follows publishes whole files."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name, directory=False)
        _fsync(Path(folder), directory=True)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class StagedDirectory:
    """`with StagedDirectory(destination, replace) as stage:` write into `stage.path`, then `stage.commit()`.

    The build folder is a fresh sibling of `destination`. Leaving the block without `commit()`
    (an exception, Ctrl-C) deletes it and leaves `destination` untouched. `commit()` publishes it
    as `destination` (protocol in the module docstring); with `replace=False` it refuses to replace
    a non-empty `destination`.
    """

    def __init__(self, destination: str | Path, replace: bool = False):
        self.destination = Path(destination)
        self.replace = replace
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.path: Path | None = None
        self.committed = False

    def _sibling(self, kind: str) -> Path:
        while True:
            path = self.destination.parent / sibling_name(self.destination, kind, self.host, self.pid, secrets.token_hex(4))
            if not os.path.lexists(path):
                return path

    def __enter__(self) -> "StagedDirectory":
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        path = self._sibling("tmp")
        path.mkdir()
        self.path = path
        return self

    def commit(self) -> None:
        """Move the build folder into place; the previous `destination` (if any) is deleted after."""
        assert self.path is not None and not self.committed
        fsync_tree(self.path)
        old = None
        if os.path.lexists(self.destination):
            if not self.destination.is_dir():
                raise FileExistsError(f"{self.destination} exists and is not a folder")
            if not self.replace and any(self.destination.iterdir()):
                raise FileExistsError(f"{self.destination} exists and is not empty")
            old = self._sibling("old")
            os.rename(self.destination, old)
        try:
            os.rename(self.path, self.destination)
        except OSError:
            if old is not None:
                os.rename(old, self.destination)
            raise
        self.committed = True
        if old is not None:
            trash = self._sibling("trash")
            os.rename(old, trash)
            _remove(trash)
        _fsync(self.destination.parent, directory=True)

    def __exit__(self, *exc_info) -> None:
        if not self.committed and self.path is not None:
            _remove(self.path)
