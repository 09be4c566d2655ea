"""Atomic writes: every output appears under its final name only once it is complete."""
import contextlib
import errno
import hashlib
import os
import shutil
import tempfile

from .errors import TfkdError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
MARGIN = 16 << 20  # beside a file whose size is known, at least this much more stays free


def no_space(e):
    """Whether `e` says the disk (or the quota) is full: an OSError's errno, or HDF5's text of it."""
    if isinstance(e, OSError) and e.errno in NO_SPACE:
        return True
    text = str(e)
    return "No space left on device" in text or "Disk quota exceeded" in text or "errno = 28" in text


def no_space_error(path, e=None):
    why = "Disk quota exceeded" if isinstance(e, OSError) and e.errno == errno.EDQUOT else "No space left on device"
    return TfkdError(f"{why} writing {path}: free space and rerun")


def check_space(path, need):
    """Refuse before writing `need` bytes beside `path` when the disk has not that much (plus a margin) free:
    h5py may crash the process, not raise, when a write fails for want of space."""
    folder = os.path.dirname(os.fspath(path)) or "."
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder) or "."
    free = shutil.disk_usage(folder).free
    if free < need + MARGIN:
        raise TfkdError(f"No space left on device writing {path}: it needs {need / 2**20:,.0f} MiB and "
                        f"{free / 2**20:,.0f} MiB is free; free space and rerun")


def _read_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()  # read once: os.umask is process-wide, and checkpoints are written from a thread


@contextlib.contextmanager
def atomic_path(path, need=0):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    `need`: the bytes the block will write, checked against the free space first. A full disk (or quota)
    is one TfkdError naming `path`; the temporary file never outlives the block."""
    path = os.fspath(path)
    if need:
        check_space(path, need)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished outputs get the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as e:
        if no_space(e) and not isinstance(e, TfkdError):
            raise no_space_error(path, e) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def sha256_file(path):
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
