"""An advisory lock that makes one process the owner of a run folder for the life of its run.

`fcntl.flock` on `<folder>/.lock`: the kernel drops it when the holder exits or dies (even by SIGKILL), so a lock
left by a dead process is simply taken over. The holder's pid, host, start time and command are written into the
file so that a refused process can say who holds the folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import RkdError

LOCK_NAME = ".lock"
_held: dict = {}  # resolved lock path -> open file holding the flock (one per folder and process)


def _holder_line(lock_file: Path) -> str:
    """Who holds `lock_file`, as written by the holder ('another process' when it cannot be read)."""
    try:
        holder = json.loads(lock_file.read_text())
        return (f"pid {holder['pid']} on {holder['host']} since {holder['started']} "
                f"({holder['command'][:80]})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _command_line() -> str:
    program = Path(sys.argv[0]).name
    return " ".join(["rkd" if program == "__main__.py" else program, *sys.argv[1:]])


def acquire(folder: Path, what: str = "run directory") -> Path:
    """Lock `folder` (created if missing) for this process, or raise a one-line RkdError naming the holder.

    Re-entrant within one process: a folder this process already holds is returned as is."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RkdError(f"{what} {folder} is a file, not a folder: choose another --name or --runs-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RkdError(f"{what} {folder} cannot be created ({err.strerror}): choose a writable --runs-dir "
                       "or --name") from None
    lock_file = (folder / LOCK_NAME).resolve()
    if lock_file in _held:
        return lock_file
    try:
        handle = open(lock_file, "a+")
    except OSError as err:
        raise RkdError(f"{what} {folder} is not writable ({err.strerror}): choose a writable --runs-dir") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RkdError(f"{what} {folder} is in use by {_holder_line(lock_file)}: wait for that run to end or stop "
                       "it, or choose another --name") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                             "command": _command_line()}) + "\n")
    handle.flush()
    _held[lock_file] = handle
    return lock_file


def release(folder: Path) -> None:
    """Give up this process's lock on `folder` (nothing happens when it holds none)."""
    handle = _held.pop((Path(folder) / LOCK_NAME).resolve(), None)
    if handle is not None:
        handle.close()  # closing the last descriptor drops the flock


def release_all() -> None:
    """Give up every lock this process holds (the end of a command run in-process)."""
    for lock_file in list(_held):
        _held.pop(lock_file).close()
