"""pytest plugin (registered through the ``pytest11`` entry point).

- ``pytest --derivcheck cases/`` (repeatable), or the ini option ``derivcheck_paths``,
  collects every case file under those paths as one test item per file; a failure shows
  the agreement table. ``--derivcheck-device cuda`` runs the torch engines on the GPU.
- The ``derivcheck`` fixture offers ``check_torch``/``assert_torch``, ``check_numpy``/
  ``assert_numpy`` and ``check_operator``/``assert_operator``, and records the verdict and
  the largest relative error as test properties (they appear in ``--junitxml`` output).

Items also record ``verdict`` and ``max_rel_error`` as JUnit properties.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


class DerivcheckFailure(Exception):
    """A case did not agree; the message is the explanation."""


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("derivcheck")
    group.addoption("--derivcheck", action="append", default=[], metavar="PATH", help="collect derivcheck case files (*.toml) under PATH as tests")
    group.addoption("--derivcheck-device", default="cpu", choices=("cpu", "cuda"), help="device of the torch engines for collected cases")
    parser.addini("derivcheck_paths", type="linelist", default=[], help="folders or files of derivcheck cases to collect as tests")


def pytest_configure(config: Any) -> None:
    raw = list(config.getoption("derivcheck") or []) + list(config.getini("derivcheck_paths") or [])
    root = Path(str(config.rootpath))
    paths = [(Path(p) if Path(p).is_absolute() else Path.cwd() / p).resolve() for p in raw]
    ini_paths = [(root / p).resolve() for p in config.getini("derivcheck_paths") or []]
    config._derivcheck_paths = paths[: len(raw) - len(ini_paths)] + ini_paths
    for path in config._derivcheck_paths:
        if str(path) not in config.args:
            config.args.append(str(path))


def _wanted(config: Any, file_path: Path) -> bool:
    resolved = file_path.resolve()
    for root in getattr(config, "_derivcheck_paths", []):
        if resolved == root or root in resolved.parents:
            return True
    return False


def pytest_collect_file(file_path: Path, parent: Any) -> Any:
    if file_path.suffix == ".toml" and _wanted(parent.config, file_path):
        return DerivcheckFile.from_parent(parent, path=file_path)
    return None


class DerivcheckFile(pytest.File):
    """A case file: one item; a suite file: one item per generated case (so ``pytest -n``
    through pytest-xdist spreads a suite's cases over its workers)."""

    def collect(self) -> Any:
        from derivcheck.loading import read_table
        from derivcheck.errors import DerivcheckError
        from derivcheck.escaping import one_line
        from derivcheck.suite import expand_suite, is_suite

        try:
            table = read_table(self.path)
            names = [c.get("name", str(i)) for i, c in enumerate(expand_suite(table, str(self.path)))] if is_suite(table) else None
        except DerivcheckError:
            names = None  # the item reports the error when it runs
        if names is None:
            yield DerivcheckItem.from_parent(self, name=one_line(self.path.stem))
            return
        for index, name in enumerate(names):
            item = DerivcheckItem.from_parent(self, name=one_line(str(name)))
            item.case_index = index
            yield item


class DerivcheckItem(pytest.Item):
    """Runs one case file and fails with the agreement table unless every engine agrees."""

    case_index: int | None = None

    def runtest(self) -> None:
        from derivcheck.loading import load_case, load_case_at
        from derivcheck.errors import DerivcheckError
        from derivcheck.report.junit import max_rel_error
        from derivcheck.report.table import details, summary_table
        from derivcheck.runner import run_case

        try:
            case = load_case(self.path) if self.case_index is None else load_case_at(self.path, self.case_index)
        except DerivcheckError as exc:
            self.user_properties.append(("verdict", "error"))
            raise DerivcheckFailure(f"invalid case file: {exc}") from None
        results = run_case(case, device=self.config.getoption("derivcheck_device"))
        if all(r.skipped for r in results):
            pytest.skip(results[0].skipped)
        verdicts = [r.verdict for r in results]
        worst = next((v for v in ("disagree", "error", "kink") if v in verdicts), "agree")
        self.user_properties.append(("verdict", worst))
        self.user_properties.append(("max_rel_error", f"{max(max_rel_error(r) for r in results):.3e}"))
        if not all(r.ok for r in results):
            bad = [r for r in results if not r.ok]
            raise DerivcheckFailure(details(bad) + "\n\n" + summary_table(bad))

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        if isinstance(excinfo.value, DerivcheckFailure):
            from derivcheck.escaping import terminal

            return terminal(str(excinfo.value))
        return super().repr_failure(excinfo)

    def reportinfo(self) -> Any:
        return self.path, 0, f"derivcheck case {self.name}"


class DerivcheckFixture:
    """The API of :mod:`derivcheck.check`, recording each check's verdict and largest
    relative error as test properties."""

    def __init__(self, record: Any):
        self._record = record

    def _note(self, result: Any) -> Any:
        self._record("derivcheck_verdict", "agree" if result.ok else "disagree")
        self._record("derivcheck_max_rel_error", f"{max((q.max_rel_error for q in result.quantities), default=0.0):.3e}")
        return result

    def check_torch(self, *args: Any, **kwargs: Any) -> Any:
        from derivcheck.check import check_torch

        return self._note(check_torch(*args, **kwargs))

    def check_numpy(self, *args: Any, **kwargs: Any) -> Any:
        from derivcheck.check import check_numpy

        return self._note(check_numpy(*args, **kwargs))

    def check_operator(self, *args: Any, **kwargs: Any) -> Any:
        from derivcheck.check import check_operator

        return self._note(check_operator(*args, **kwargs))

    def _assert(self, result: Any) -> Any:
        from derivcheck.check import DerivativeMismatch

        if not result.ok:
            raise DerivativeMismatch(result)
        return result

    def assert_torch(self, *args: Any, **kwargs: Any) -> Any:
        return self._assert(self.check_torch(*args, **kwargs))

    def assert_numpy(self, *args: Any, **kwargs: Any) -> Any:
        return self._assert(self.check_numpy(*args, **kwargs))

    def assert_operator(self, *args: Any, **kwargs: Any) -> Any:
        return self._assert(self.check_operator(*args, **kwargs))


@pytest.fixture
def derivcheck(record_property: Any) -> DerivcheckFixture:
    """derivcheck's checks, with verdicts recorded as JUnit properties."""
    return DerivcheckFixture(record_property)
