"""Filesystem helpers of the core layer: atomic writes (with fsync), the one-writer lock of a run or index
folder, cleanup of temporary folders left by killed runs, and one-line descriptions of OS errors.

* :func:`atomic_file` / :func:`atomic_dir` (and :func:`write_text_atomic` / :func:`write_json_atomic` on top):
  write under a temporary name next to the target, fsync the data and the folder, then rename in one step. Temporary names carry the
  writer's pid (``.NAME.tmp-PID-XXXX``) so that :func:`clean_stale_tmp` can tell a live writer's folder from
  a dead one's.
* :class:`FolderLock`: an exclusive, non-blocking lock (``filelock``) on a run folder or an index output. A
  second writer gets :class:`FolderLockedError` naming the holder (pid, host, command, since when). The OS
  releases the lock when its process dies, even under ``kill -9``.
* :func:`describe_os_error`: ``ENOSPC``, read-only file systems, permissions and path-is-a-file, said as such.
* :func:`release_pages`: drop the pages a memmap has touched from the process's RSS while streaming through it.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

logger = logging.getLogger(__name__)

__all__ = ["fsync_path", "fsync_tree", "tmp_prefix", "atomic_file", "write_text_atomic", "write_json_atomic",
           "atomic_dir", "pid_alive", "clean_stale_tmp", "FolderLockedError", "FolderLock", "LOCK_SUFFIX",
           "HOLDER_SUFFIX", "RUN_LOCK", "RUN_HOLDER", "LOCK_NAMES", "run_folder_lock", "output_lock",
           "check_writable_dir", "write_error", "describe_os_error", "release_pages"]

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


# ------------------------------------------------------------------------------------------ memmap pages
def release_pages(*arrays) -> None:
    """Drop the pages of numpy memmaps from this process's resident set (``madvise(MADV_DONTNEED)``).

    A file-backed page that a process has read or written through a mapping counts in its RSS until the mapping
    goes, so streaming a 15 GB ``.npy`` through ``np.load(mmap_mode="r")`` ends with 15 GB "resident". Writable
    mappings are flushed first; the data stays in the file and in the page cache, and later reads fault the
    pages back in. Anything that is not a memmap (or a view of one), and systems without ``madvise``, are left
    alone, and so are copy-on-write (``mode="c"``) maps, whose changes live only in those pages.
    """
    import mmap

    for arr in arrays:
        mm = getattr(arr, "_mmap", None)
        mode = getattr(arr, "mode", "r")
        if mm is None or mode == "c":
            continue
        try:
            if mode != "r":
                mm.flush()
            mm.madvise(mmap.MADV_DONTNEED)
        except (AttributeError, OSError, ValueError):  # no madvise here, or a closed mapping
            pass


# ------------------------------------------------------------------------------------------ fsync
def fsync_path(path: str | os.PathLike) -> None:
    """fsync one file or folder (folders: their entries); silently skipped where the OS refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems refuse fsync on folders
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under ``root`` (children first), then ``root`` itself."""
    root = Path(root)
    if root.is_file():
        fsync_path(root)
        return
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                fsync_path(p)
        fsync_path(dirpath)


# ------------------------------------------------------------------------------------------ atomic writes
def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step with renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def tmp_prefix(name: str) -> str:
    """The prefix of temporary names made for ``name``: ``.NAME.tmp-PID-``."""
    return f".{name}.tmp-{os.getpid()}-"


def _check_target(path: Path) -> None:
    """Refuse early, naming the path, when ``path``'s folder cannot hold it."""
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(parent))
            break


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success it replaces ``path`` in one step.

    The caller writes the temporary file (any way it likes: text, gzip, numpy...) and closes it; then it is
    fsynced, renamed over ``path`` with ``os.replace`` and the folder is fsynced. On an exception the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload: Any, **dumps_kw) -> Path:
    """``write_text_atomic`` of ``payload`` as indented JSON (``dumps_kw`` go to ``json.dumps``)."""
    kw = {"indent": 2, "sort_keys": True, **dumps_kw}
    return write_text_atomic(path, json.dumps(payload, **kw))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``path``; on success it replaces ``path`` in one step.

    Everything written into it is fsynced before the rename, and the parent folder after it, so a power
    cut leaves either the old folder or the complete new one. On Linux an existing folder is swapped with
    ``renameat2(RENAME_EXCHANGE)``, so readers see either the old or the new folder, never a missing one.
    Elsewhere the old folder is renamed away first (a crash in between leaves it as ``.NAME.old-*`` next to
    ``path``). On an exception the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path).absolute()
    _check_target(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise FileExistsError(errno.EEXIST, "exists and is not a folder; refusing to replace it", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(path.name), dir=path.parent))
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileExistsError(errno.EEXIST, "exists and is not a folder; refusing to replace it", str(path))
    if not path.exists():
        os.rename(tmp, path)
    elif _rename_exchange(tmp, path):  # tmp now holds the old folder
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        old = path.parent / f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(path.parent)


# ------------------------------------------------------------------------------------------ stale temporaries
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


def clean_stale_tmp(folder: str | os.PathLike, names: Iterable[str] | None = None, *,
                    locked: bool = False, prefixes: Iterable[str] = ()) -> list[Path]:
    """Remove temporary entries (``.NAME.tmp-*``, ``.NAME.old-*``) that a killed writer left in ``folder``.

    An entry whose name records a pid is removed when that process is gone. With ``locked=True`` (the caller
    holds the folder's writer lock, so no one else can be writing there) every such entry is stale and
    removed. ``names`` restricts the cleanup to temporaries of those names; ``prefixes`` adds other patterns
    (e.g. ``".smollm2-"``) that are removed only when ``locked``. Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = set(names) if names is not None else None
    prefixes = tuple(prefixes)
    removed = []
    for entry in folder.iterdir():
        m = _TMP_RE.match(entry.name)
        stale = False
        if m and (wanted is None or m.group("name") in wanted):
            pid = m.group("pid")
            stale = locked or (pid is not None and int(pid) != os.getpid() and not pid_alive(int(pid)))
        elif locked and prefixes and entry.name.startswith(prefixes):
            stale = True
        if not stale:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as e:  # not ours to remove, or already gone
            logger.debug("could not remove %s: %s", entry, e)
            continue
        removed.append(entry)
    if removed:
        logger.warning("removed %d temporary folder(s) left by an interrupted run in %s: %s", len(removed), folder,
                       ", ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed


# ------------------------------------------------------------------------------------------ the writer lock
class FolderLockedError(RuntimeError):
    """Another process (or another object in this one) is writing the folder."""


LOCK_SUFFIX = ".lock"
HOLDER_SUFFIX = ".holder.json"


class FolderLock:
    """An exclusive writer lock on ``lock_file`` (non-blocking), with the holder recorded next to it.

    >>> with FolderLock("runs/a/.jmlr.lock", what="training run runs/a"):   # doctest: +SKIP
    ...     ...
    """

    def __init__(self, lock_file: str | os.PathLike, what: str):
        self.lock_file = Path(lock_file)
        self.holder_file = self.lock_file.with_name(self.lock_file.name[: -len(LOCK_SUFFIX)] + HOLDER_SUFFIX
                                                    if self.lock_file.name.endswith(LOCK_SUFFIX)
                                                    else self.lock_file.name + HOLDER_SUFFIX)
        self.what = what
        self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None and self._lock.is_locked

    def holder(self) -> dict:
        """What the current (or last) holder recorded: pid, host, command, since."""
        try:
            return json.loads(self.holder_file.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "FolderLock":
        from filelock import FileLock, Timeout

        if self.held:
            return self
        _check_target(self.lock_file)
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_file), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            h = self.holder()
            who = (f"pid {h.get('pid', '?')} on {h.get('host', '?')}"
                   + (" (this process)" if h.get("pid") == os.getpid() and h.get("host") == socket.gethostname()
                      else "")
                   + (f", running {h['command']!r}" if h.get("command") else "")
                   + (f", since {h['since']}" if h.get("since") else ""))
            raise FolderLockedError(
                f"{self.what} is in use by another writer ({who}; lock {self.lock_file}); wait for it to "
                "finish or stop it, or choose another folder") from None
        self._lock = lock
        try:
            write_json_atomic(self.holder_file, {
                "pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:300]})
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                if self.holder().get("pid") == os.getpid():
                    self.holder_file.unlink()
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # the OS drops the lock with the descriptor anyway; this tidies the holder file
        with contextlib.suppress(Exception):
            self.release()


RUN_LOCK = ".jmlr.lock"
RUN_HOLDER = ".jmlr.holder.json"
LOCK_NAMES = frozenset({RUN_LOCK, RUN_HOLDER})


def run_folder_lock(folder: str | os.PathLike, what: str | None = None) -> FolderLock:
    """The writer lock of a run folder (training or a stage): ``FOLDER/.jmlr.lock`` (not yet acquired)."""
    folder = Path(folder)
    return FolderLock(folder / RUN_LOCK, what or f"run folder {folder}")


def output_lock(path: str | os.PathLike, what: str | None = None) -> FolderLock:
    """The writer lock of an output that is replaced as a whole (an index folder): ``.NAME.lock`` beside it,
    since a lock inside would be swapped away with the old folder."""
    path = Path(path).absolute()
    return FolderLock(path.parent / f".{path.name}{LOCK_SUFFIX}", what or f"{path}")


def check_writable_dir(folder: str | os.PathLike, key: str) -> Path:
    """Fail early, naming ``key``, when ``folder`` cannot be created or written (a file, read-only...)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{key} is a file, not a folder", str(folder))
    _check_target(folder / "x")
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{key} is not writable", str(folder))
    return folder


# ------------------------------------------------------------------------------------------ error text
def write_error(e: BaseException, path: str | os.PathLike) -> OSError:
    """An :class:`OSError` naming ``path`` for a failed write (``e`` from the OS, torch or safetensors)."""
    if isinstance(e, OSError) and e.errno is not None:
        return type(e)(e.errno, e.strerror or str(e), str(getattr(e, "filename", None) or path))
    with contextlib.suppress(OSError):  # a C++ stream error says nothing: ask the file system
        if shutil.disk_usage(Path(path).parent if not Path(path).is_dir() else path).free < 1 << 20:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"write failed ({e})", str(path))


def describe_os_error(e: OSError) -> str:
    """One line naming the path, what went wrong and the remedy."""
    path = e.filename if e.filename is not None else None
    where = f" {path}" if path else ""
    if isinstance(e, FolderLockedError):
        return str(e)
    code = e.errno
    if code == errno.ENOSPC:
        return f"no space left on device while writing{where}: free some space or write somewhere else"
    if code == errno.EDQUOT:
        return f"disk quota exceeded while writing{where}: free some space or write somewhere else"
    if code == errno.EROFS:
        return f"read-only file system:{where}: choose a folder on a writable disk"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where}: choose a folder you can write, or fix its permissions"
    if code == errno.ENOTDIR:
        detail = e.strerror if e.strerror and "file" in e.strerror else "a part of the path is a file, not a folder"
        return f"{path}: {detail}; remove it or choose another path"
    if code == errno.EISDIR:
        return f"{path}: is a folder, expected a file"
    if code == errno.EEXIST:
        return f"{path}: {e.strerror or 'already exists'}; remove it or choose another path"
    if code == errno.ENOENT:
        return f"{path}: no such file or folder" if path else str(e)
    if code is not None and e.strerror:
        return f"{e.strerror}:{where}"
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
