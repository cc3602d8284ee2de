"""Checks that an output path can be written, made before a run starts.

``--json FILE``, ``--junit FILE`` and ``report -o DIR`` are checked up front, so that a
path that is a folder, lies under a regular file, points into ``/proc`` or sits on a
read-only file system is a usage error (exit 4) in the first second instead of a
traceback after the whole run. A disk that fills up during the run is still only seen
when writing; :func:`writing` turns that into the same kind of error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from derivcheck.errors import DerivcheckError


def _nearest_existing(path: Path) -> Path:
    current = path
    while not (current.exists() or current.is_symlink()):
        if current.parent == current:
            break
        current = current.parent
    return current


def _probe(folder: Path, what: str) -> None:
    """Create and remove a temporary file in `folder` (the only reliable writability test)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".derivcheck-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise DerivcheckError(f"{what}: cannot write in {str(folder)!r} ({exc.strerror or exc})") from None


def _check_folder_chain(folder: Path, what: str) -> None:
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise DerivcheckError(f"{what}: {str(existing)!r} is not a folder, so nothing can be written under it")
    _probe(existing, what)


def check_output_file(path: str, option: str) -> None:
    """Raise :class:`DerivcheckError` unless `path` can be written as a file."""
    what = f"{option} {path!r}"
    if not path or path.endswith(("/", os.sep)):
        raise DerivcheckError(f"{what}: give a file name, not a folder")
    target = Path(path)
    if target.is_dir():
        raise DerivcheckError(f"{what}: is a folder; give a file name")
    if (target.exists() or target.is_symlink()) and not target.is_file():
        raise DerivcheckError(f"{what}: exists and is not a regular file")
    _check_folder_chain(target.parent if str(target.parent) else Path("."), what)


def check_output_folder(path: str, option: str) -> None:
    """Raise :class:`DerivcheckError` unless `path` is, or can be made, a writable folder."""
    what = f"{option} {path!r}"
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise DerivcheckError(f"{what}: exists and is not a folder")
    _check_folder_chain(target, what)


@contextmanager
def writing(what: str) -> Iterator[None]:
    """Turn an ``OSError`` while writing `what` (a full disk, a folder removed meanwhile)
    into a :class:`DerivcheckError` that names it."""
    try:
        yield
    except OSError as exc:
        raise DerivcheckError(f"could not write {what}: {exc.strerror or exc}") from None


def write_atomic(path: str | Path, content: str | bytes) -> None:
    """Write `content` (text or bytes) to `path` through a temporary file and a rename:
    readers see the old file or the new one, never half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if isinstance(content, bytes):
            with os.fdopen(fd, "wb") as binary:
                binary.write(content)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a report should be readable like any file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["check_output_file", "check_output_folder", "write_atomic", "writing"]
