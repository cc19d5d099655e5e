"""Files only their owner may read: the job store (payloads, results, token hashes, the audit log),
its WAL and shared-memory files, and the first admin token; and the folders clusterai makes for them.

A folder made here is 0700 whatever the umask. A folder that already exists is left as it is: it may
be one the operator chose and shares (the working directory, /var/lib/...), and the files in it are
private anyway. A file is created 0600 before anything writes to it; an existing file with looser
bits is tightened, with a warning (it was readable by others until now)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("clusterai.files")


def private_folder(path: str | Path) -> Path:
    """`path`, made (with any missing parents) if missing, the folder itself mode 0700."""
    folder = Path(path)
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask; this is not
    return folder


def private_file(path: str | Path) -> Path:
    """`path` as a file only its owner can read and write: created empty (0600) when missing."""
    file = Path(path)
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        tighten(file)
    else:
        os.close(fd)
        os.chmod(file, 0o600)  # os.open's mode is filtered by the umask too
    return file


def tighten(path: str | Path) -> None:
    """Take group and other permissions away from an existing file, saying so."""
    file = Path(path)
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        try:
            os.chmod(file, mode & 0o700)
        except OSError as exc:  # not ours (another user's file): say so, and go on
            log.warning("%s is readable by other users (mode %o) and cannot be made private: %s", file, mode, exc)
            return
        log.warning("%s was readable by other users (mode %o); it is now %o", file, mode, mode & 0o700)
