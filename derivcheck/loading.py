"""Reading case files of every kind: discovery, TOML, suites, validation by the kind's loader.

``load_case``, ``load_cases`` and ``case_from_dict`` return a case of whatever kind the
table is (see :mod:`derivcheck.case_kinds`): this module imports no kind. Every problem
-- unreadable TOML, a file that is not a regular file, a name that is not printable --
raises :class:`~derivcheck.errors.CaseError` naming the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from derivcheck.errors import CaseError, InvalidArgument
from derivcheck.escaping import is_plain_name, terminal

MAX_CASE_BYTES = 1_000_000


def case_from_dict(
    table: Mapping[str, Any],
    *,
    file: str | None = None,
    base_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Validate a parsed case table and build the :class:`Case`.

    `overrides` may set ``dtype``, ``seed`` or ``engines`` (command-line options win over
    the file). Relative data paths resolve against `base_dir` (the case file's folder).
    Every kind of case may pin its ``device`` (``"cpu"`` or ``"cuda"``; without it the
    run's ``--device`` applies), so that a suite can span devices.
    """
    if not isinstance(table, Mapping):
        raise CaseError("a case must be a table", file=file, value=table)
    device = table.get("device")
    if device is not None and device not in DEVICES:
        raise CaseError("unknown device", file=file, key="device", value=device, allowed=", ".join(DEVICES))
    for key, limit in (("name", MAX_NAME), ("description", MAX_DESCRIPTION)):
        text = table.get(key)
        if isinstance(text, str):
            plain = is_plain_name(text) if key == "name" else terminal(text) == text
            if not plain or not text.strip() and key == "name":
                raise CaseError(
                    "must be printable text" + (" on one line" if key == "name" else " (control characters are not allowed)"),
                    file=file,
                    key=key,
                    value=text,
                    allowed="letters, digits, spaces and punctuation",
                )
            if len(text) > limit:
                raise CaseError(f"is longer than {limit} characters ({len(text)})", file=file, key=key)
    case = _case_of_kind({k: v for k, v in table.items() if k != "device"}, file=file, base_dir=base_dir, overrides=overrides)
    return dataclasses.replace(case, device=device) if device is not None else case


MAX_NAME = 200
MAX_DESCRIPTION = 4000


DEVICES = ("cpu", "cuda")


def _case_of_kind(table: Mapping[str, Any], *, file: str | None, base_dir: Path | None, overrides: Mapping[str, Any] | None) -> Any:
    from derivcheck.case_kinds import load_table

    return load_table(table, file=file, base_dir=base_dir, overrides=overrides or {})


CASE_KEYS = ("network", "grid", "template")
"""Top-level keys of a network case and of a suite; the other kinds add their marker keys."""


def is_case_table(table: Mapping[str, Any]) -> bool:
    """Whether a parsed TOML table is a case or a suite (of any registered kind)."""
    from derivcheck.case_kinds import KINDS

    return any(key in table for key in CASE_KEYS) or any(kind.marker_keys and kind.owns(table) for kind in KINDS)


def read_table(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of a case or suite file (size-limited; errors as :class:`CaseError`)."""
    path = Path(path)
    file = str(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise CaseError("case file is not a regular file (a folder, FIFO or device)", file=file)
        if info.st_size > MAX_CASE_BYTES:
            raise CaseError(f"case file is larger than {MAX_CASE_BYTES} bytes", file=file, value=info.st_size)
        with path.open("rb") as handle:
            raw = handle.read(MAX_CASE_BYTES + 1)
        if len(raw) > MAX_CASE_BYTES:
            raise CaseError(f"case file is larger than {MAX_CASE_BYTES} bytes", file=file)
        table = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise CaseError("case file not found", file=file) from None
    except tomllib.TOMLDecodeError as exc:
        raise CaseError(f"not valid TOML: {exc}", file=file) from None
    except RecursionError:
        raise CaseError("not a case file: arrays or tables nested too deeply to read", file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseError(f"case file could not be read: {exc}", file=file) from None
    return table


def load_case(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Any:
    """Read and validate one case file.

    **Raises:** :class:`~derivcheck.errors.CaseError` (exit code 4 on the command line).
    """
    from derivcheck.suite import is_suite

    table = read_table(path)
    if is_suite(table):
        raise CaseError("this is a suite file (a [grid] and a [template]): run it with `derivcheck run`, or expand it with `derivcheck generate`", file=str(path))
    return _validated(table, Path(path), overrides)


def _validated(table: Mapping[str, Any], path: Path, overrides: Mapping[str, Any] | None) -> Any:
    file = str(path)
    try:
        return case_from_dict(table, file=file, base_dir=path.parent, overrides=overrides)
    except InvalidArgument as exc:
        if isinstance(exc, CaseError):
            raise
        raise CaseError(str(exc), file=file) from None


def case_count(path: str | Path) -> int:
    """How many cases a file holds (1, or a suite's grid size)."""
    from derivcheck.suite import is_suite

    from derivcheck.suite import grid_size

    table = read_table(path)
    return grid_size(table, str(path)) if is_suite(table) else 1


def load_case_at(path: str | Path, index: int, overrides: Mapping[str, Any] | None = None) -> Any:
    """Case `index` of a file: the file's case (index 0), or the index-th case of a suite."""
    from derivcheck.suite import is_suite

    table = read_table(path)
    if not is_suite(table):
        return _validated(table, Path(path), overrides)
    return _validated(_expanded_suite(path, table)[index], Path(path), overrides)


_SUITES: dict[tuple[str, int, int], list[dict[str, Any]]] = {}


def _expanded_suite(path: str | Path, table: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The expanded grid of the suite file `path`, expanded once per process (a worker
    loads case after case of the same suite) and again if the file changes."""
    from derivcheck.suite import expand_suite

    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _SUITES:
        if len(_SUITES) >= 8:
            _SUITES.pop(next(iter(_SUITES)))
        _SUITES[key] = expand_suite(table, str(path))
    return _SUITES[key]


def load_cases(path: str | Path, overrides: Mapping[str, Any] | None = None) -> list[Any]:
    """Every case of a file: one for a case file, the whole grid for a suite file."""
    from derivcheck.suite import is_suite

    table = read_table(path)
    if not is_suite(table):
        return [_validated(table, Path(path), overrides)]
    return [_validated(case, Path(path), overrides) for case in _expanded_suite(path, table)]


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """Case files under `paths`: files as given, folders searched recursively for
    ``*.toml`` (sorted, so runs are deterministic).

    **Raises:** :class:`~derivcheck.errors.CaseError` for a path that does not exist.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            root = path.resolve()
            for p in sorted(p for p in path.rglob("*.toml") if p.is_file()):
                if p.is_symlink() or any(parent.is_symlink() for parent in p.relative_to(path).parents if str(parent) != "."):
                    target = p.resolve()
                    if not (target == root or root in target.parents):  # a link out of the folder given
                        raise CaseError("is a link to a file outside the folder being searched; give it explicitly to run it", file=str(p))
                found.append(p)
        elif path.is_file():
            found.append(path)
        elif path.exists():
            raise CaseError("not a regular file (a FIFO, device or socket)", file=str(path))
        else:
            raise CaseError("no such file or folder", file=str(path))
    unique: list[Path] = []
    for p in found:
        if p not in unique:
            unique.append(p)
    return unique
