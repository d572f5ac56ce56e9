"""Small helpers every stage uses: atomic writes, file locks and dense matrices.

Writes that must never leave a half-written file behind (curated datasets, patch stores,
checkpoints, the results store, extracted archives, generated raw data) go through
:func:`atomic_path`: the caller writes a temporary sibling of the target, which replaces the
target only when the block finishes without error. What two processes may both want to make
(a dataset's curated file and patches, a completion, rows of the results store) is made under
:func:`file_lock`, so parallel jobs of a batch plan make it once and the second one reads it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import scipy.sparse as sp

__all__ = ["WRITE_ERRNOS", "atomic_path", "dense", "file_lock"]


@contextmanager
def file_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (a hidden ``.<name>.lock`` file beside it) for the block.

    Processes on one machine (and on a file system with POSIX locks) wait for each other; the
    lock is released when the block ends or the process dies.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def atomic_path(target: str | os.PathLike, directory: bool = False, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` that replaces it when the block succeeds.

    Parameters
    ----------
    target
        The file (or folder, with ``directory=True``) to write.
    directory
        Yield a fresh empty folder instead of a file path; an existing ``target`` folder is
        removed just before the new one is renamed into place.
    fsync
        Flush the written file to disk before the rename (files only).

    On any exception (``KeyboardInterrupt`` too) the temporary file or folder is deleted and
    ``target`` is left as it was. A full disk or an unwritable folder (:data:`WRITE_ERRNOS`)
    raises an ``OSError`` of the same kind whose message names ``target`` and the fix.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as err:
        raise _write_error(err, target) from err
    # mkstemp/mkdtemp make private (0600/0700) entries; the result gets the permissions an
    # ordinary open() or mkdir() would give it, so collaborators can read shared results.
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
    try:
        yield tmp
        if fsync and not directory:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        if directory and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException as err:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            raise _write_error(err, target) from err
        raise


#: Errors of the disk or the folder (full, read-only, no permission, quota) that
#: :func:`atomic_path` reports naming the target and what to do.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT})


def _write_error(err: OSError, target: Path) -> OSError:
    """``err`` restated with the file that could not be written and the fix (nothing was left behind)."""
    if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
        fix = "free disk space there, or point SPARED_RESULTS_DIR / SPARED_PROCESSED_DIR (or out_dir) at another disk"
    else:
        fix = ("make the folder writable, or point SPARED_RESULTS_DIR / SPARED_PROCESSED_DIR (or out_dir) at a "
               "writable folder")
    return type(err)(err.errno, f"cannot write {target} ({err.strerror or err}); nothing was written: {fix}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def dense(matrix) -> np.ndarray:
    """``matrix`` as a NumPy array (sparse matrices are densified, arrays passed through)."""
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
