"""Atomic file writes: a reader (or a resumed run) never sees a half-written file.

Each writer writes to a temporary file in the destination folder, fsyncs it and
renames it over the destination, which is atomic on POSIX file systems. A write that
fails (disk full, read-only folder) names the file meant, never the temporary one.

Binary files (models, checkpoints, outputs) also get a checksum beside them,
`<name>.sha256` in `sha256sum` format, written before the file itself (`write_checked`,
which `write_npz` and checkpoint.save_torch use): `read_checked`
refuses a file whose bytes no longer match it (a file damaged after it was written).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml

CHECKSUM_SUFFIX = ".sha256"


class WriteError(OSError):
    """A file that could not be written (disk full, read-only folder): the user's to fix."""


class DamagedFileError(OSError):
    """A file whose bytes no longer match the checksum written with it."""


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", named: str | os.PathLike[str] | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync it and rename it to `path`.
    A failed write raises WriteError naming `named` (default `path`), never the temporary."""
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as error:
        raise _write_error(Path(named or dest), error) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; keep the user's umask
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise _write_error(Path(named or dest), error) from None
        raise


def _write_error(dest: Path, error: OSError) -> WriteError:
    """One line naming the file meant and what to do about the failure."""
    fix = {
        errno.ENOSPC: f"free space on the disk of {dest.parent}",
        errno.EDQUOT: f"free space within your disk quota on {dest.parent}",
        errno.EROFS: f"{dest.parent} is on a read-only file system: choose another --results",
    }.get(
        error.errno or 0, "make its folder writable, or choose another results folder (--results)"
    )
    failure = WriteError(f"cannot write {dest} ({error.strerror or error}): {fix}")
    failure.errno = error.errno
    return failure


@functools.cache
def _umask() -> int:
    """The process umask (read once: reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_checked(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` and, first, its checksum beside it (a crash in between leaves a file
    that `read_checked` refuses or no file, never a damaged file that passes)."""
    digest = hashlib.sha256(data).hexdigest()
    with atomic_open(checksum_path(path), "w", named=path) as handle:
        handle.write(f"{digest}  {Path(path).name}\n")
    write_bytes(path, data)


def checksum_path(path: str | os.PathLike[str]) -> Path:
    return Path(f"{path}{CHECKSUM_SUFFIX}")


def read_checked(path: str | os.PathLike[str], remedy: str) -> bytes:
    """The bytes of a file written by `write_checked`, refused when they no longer match its
    checksum (a file without one, written by an older eebench, is read as it is)."""
    data = Path(path).read_bytes()
    try:
        recorded = checksum_path(path).read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return data
    if hashlib.sha256(data).hexdigest() != recorded:
        raise DamagedFileError(
            f"{path} is damaged: its bytes no longer match the sha256 in "
            f"{checksum_path(path).name}, written with it; {remedy}"
        )
    return data


def remove(path: str | os.PathLike[str]) -> None:
    """Delete a file written by `write_checked` and its checksum."""
    Path(path).unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


def write_yaml(path: str | os.PathLike[str], data: Any) -> None:
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_checked(path, buffer.getvalue())


def write_csv(path: str | os.PathLike[str], frame: Any) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    write_text(path, frame.to_csv(index=False))


def read_yaml(path: str | os.PathLike[str]) -> Any:
    with open(path) as handle:
        return yaml.safe_load(handle)
