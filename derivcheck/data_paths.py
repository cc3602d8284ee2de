"""Where a case file may read data from, and how.

A case file is untrusted input, so the data files it names are confined: a path resolves
(links followed) inside the case file's own folder, or inside a folder the person running
derivcheck allows with ``--data-root DIR`` (repeatable) or ``$DERIVCHECK_DATA_ROOT``
(folders separated by ``os.pathsep``). Absolute paths, ``..`` that leaves those folders
and links that point outside are refused, as are special files (devices, FIFOs, sockets)
and files beyond :data:`MAX_DATA_BYTES`. Error messages name the path as written in the
case file and never quote what a refused file holds.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from derivcheck.errors import CaseError

ENV_ROOTS = "DERIVCHECK_DATA_ROOT"
MAX_DATA_BYTES = 64 * 1024 * 1024
"""Largest data file a case may read (64 MiB)."""


def configure(roots: list[str] | None) -> None:
    """Allow the folders `roots` (the command line's ``--data-root``) besides each case
    file's own folder, for this process and the worker processes it starts."""
    if not roots:
        return
    for root in roots:
        if not Path(root).is_dir():
            raise CaseError("--data-root must name an existing folder", value=root)
    current = [r for r in os.environ.get(ENV_ROOTS, "").split(os.pathsep) if r]
    os.environ[ENV_ROOTS] = os.pathsep.join(current + [str(Path(r).resolve()) for r in roots])


def allowed_roots(case_folder: Path) -> list[Path]:
    roots = [case_folder.resolve()]
    roots += [Path(r).resolve() for r in os.environ.get(ENV_ROOTS, "").split(os.pathsep) if r]
    return roots


def open_data_file(relative: str, case_folder: Path, *, file: str | None, key: str) -> bytes:
    """The bytes of data file `relative` (as written in the case file), after the checks
    of the module docstring; :class:`CaseError` naming `key` otherwise."""
    allowed = "a path relative to the case file's folder, inside it (or inside a --data-root folder)"
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise CaseError("must be a file path", file=file, key=key, value=relative, allowed=allowed)
    written = Path(relative)
    candidates = [case_folder / written] if not written.is_absolute() else [written]
    roots = allowed_roots(case_folder)
    try:
        resolved = candidates[0].resolve()
    except (OSError, RuntimeError):  # a loop of links
        raise CaseError("data file path cannot be resolved", file=file, key=key, value=relative, allowed=allowed) from None
    if not any(resolved == root or root in resolved.parents for root in roots):
        reason = "is absolute" if written.is_absolute() else "leads outside the case file's folder" + (" (through a link)" if ".." not in written.parts else "")
        raise CaseError(f"data file path {reason}; derivcheck reads data only inside the case file's folder or a --data-root folder", file=file, key=key, value=relative, allowed=allowed)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        raise CaseError("data file not found", file=file, key=key, value=relative, allowed=allowed) from None
    except OSError as exc:
        raise CaseError(f"data file could not be read ({exc.strerror})", file=file, key=key, value=relative) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device or other special file"
        raise CaseError(f"data file is {kind}, not a regular file", file=file, key=key, value=relative)
    if info.st_size > MAX_DATA_BYTES:
        raise CaseError(f"data file is larger than {MAX_DATA_BYTES // (1024 * 1024)} MiB ({info.st_size} bytes)", file=file, key=key, value=relative)
    try:
        fd = os.open(resolved, flags)
    except OSError as exc:
        raise CaseError(f"data file could not be read ({exc.strerror})", file=file, key=key, value=relative) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between the checks
            raise CaseError("data file is not a regular file", file=file, key=key, value=relative)
        data = read_at_most(fd, MAX_DATA_BYTES)
    except OSError as exc:
        raise CaseError(f"data file could not be read ({exc.strerror})", file=file, key=key, value=relative) from None
    finally:
        os.close(fd)
    if data is None:  # it grew between the checks
        raise CaseError(f"data file is larger than {MAX_DATA_BYTES // (1024 * 1024)} MiB", file=file, key=key, value=relative)
    return data


def read_at_most(fd: int, limit: int) -> bytes | None:
    """Every byte of the open file `fd`, read in 1 MiB chunks; ``None`` as soon as it holds
    more than `limit` (a file that grows, or a device that never ends)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)


__all__ = ["ENV_ROOTS", "MAX_DATA_BYTES", "allowed_roots", "configure", "open_data_file", "read_at_most"]
