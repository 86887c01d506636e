"""The embedded default's files kept private (SPEC section 8), whatever the umask: the data
folder `0700`, the SQLite database and its `-wal`, `-shm` and `-journal` files `0600` (they
hold password hashes and every conversation). SQLite gives its `-wal` and `-shm` files the
mode of the database file, so the database is created `0600` before SQLite first opens it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path, *, tighten: bool = False) -> None:
    """Make `path` (and its missing parents) with mode 0700. An existing folder is left as it
    is, unless `tighten`: then one of ours loses its group and other permissions."""
    existed = path.is_dir()
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if existed and not tighten:
        return
    with contextlib.suppress(OSError):  # not ours to change: left as the operator set it
        st = path.stat()
        if st.st_uid == os.geteuid():
            mode = PRIVATE_DIR if not existed else st.st_mode & PRIVATE_DIR
            if st.st_mode & 0o777 != mode:
                os.chmod(path, mode)


def private_sqlite(database: Path, data_dir: Path) -> None:
    """Before SQLite opens `database`: its folder made private (tightened when it is the data
    folder), the file created `0600` when missing, and it and its side files set `0600`."""
    parent = database.parent
    private_dir(parent, tighten=_same(parent, data_dir))
    fd = os.open(database, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        with contextlib.suppress(OSError):
            os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    for suffix in _SQLITE_SIDE_FILES:
        with contextlib.suppress(OSError):
            os.chmod(f"{database}{suffix}", PRIVATE_FILE)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
