"""pytest plugin (registered through the ``pytest11`` entry point).

- ``pytest --derivcheck cases/`` collects the case and suite files (``*.toml``) among the
  paths pytest collects -- those named on the command line, else ``testpaths`` -- as one
  test item per case, as ``--nbval`` does for notebooks; ``pytest --derivcheck cases/``
  collects exactly the cases. A failure shows the agreement table. In a folder, a
  ``.toml`` file is a case when it has a case's keys (``network``, ``pde``, ``density``,
  ``generator``, a suite's ``grid``/``template``), so ``pyproject.toml`` and other
  configuration are left alone; a file named on the command line is always a case.
- The ini option ``derivcheck_paths`` (folders or files) collects those cases without the
  flag; they are collected when the command line names no paths.
- ``--derivcheck-device cuda`` runs the torch engines on the GPU.
- The Hypothesis profile ``derivcheck-ci`` (derandomized, no deadline, no example
  database) is registered by the plugin, so ``pytest --hypothesis-profile=derivcheck-ci``
  works in any project that has Hypothesis.
- The ``derivcheck`` fixture offers ``check_torch``/``assert_torch``, ``check_numpy``/
  ``assert_numpy`` and ``check_operator``/``assert_operator``, and records the verdict and
  the largest relative error as test properties (they appear in ``--junitxml`` output).

Items also record ``verdict`` and ``max_rel_error`` as JUnit properties. Properties sit in
each ``<testcase>``, which Jenkins and GitLab read; the strict xunit2 schema has no place
for them (``junit_family = legacy`` in the ini file gives a schema-valid file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

HYPOTHESIS_PROFILE = "derivcheck-ci"


class DerivcheckFailure(Exception):
    """A case did not agree; the message is the explanation."""


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("derivcheck")
    group.addoption("--derivcheck", action="store_true", default=False, help="collect derivcheck case and suite files (*.toml) among the collected paths as tests")
    group.addoption("--derivcheck-device", default="cpu", choices=("cpu", "cuda"), help="device of the torch engines for collected cases")
    parser.addini("derivcheck_paths", type="linelist", default=[], help="folders or files of derivcheck cases to collect as tests (when the command line names no paths)")


def register_hypothesis_profile() -> None:
    """Register ``derivcheck-ci``: derandomized, no deadline, no example database, 25
    examples, the too-slow health check off (derivations are slow the first time)."""
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # pragma: no cover - Hypothesis is the optional test extra
        return
    settings.register_profile(HYPOTHESIS_PROFILE, derandomize=True, deadline=None, database=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: Any) -> None:
    register_hypothesis_profile()  # before Hypothesis's own plugin loads --hypothesis-profile
    root = Path(str(config.rootpath))
    ini_paths = [(root / p).resolve() for p in config.getini("derivcheck_paths") or []]
    named = [Path(arg.split("::")[0]) for arg in config.args]
    named = [(p if p.is_absolute() else Path(str(config.invocation_params.dir)) / p).resolve() for p in named]
    config._derivcheck_named = {p for p in named if p.suffix == ".toml"}
    config._derivcheck_paths = list(ini_paths)
    if config.getoption("derivcheck"):
        config._derivcheck_paths += [p for p in named if p.exists()]
    from_command_line = getattr(config, "args_source", None) == pytest.Config.ArgsSource.ARGS
    if ini_paths and not from_command_line:
        config.args[:] = [a for a in config.args if Path(a).resolve() not in ini_paths] + [str(p) for p in ini_paths]


def _wanted(config: Any, file_path: Path) -> bool:
    resolved = file_path.resolve()
    for root in getattr(config, "_derivcheck_paths", []):
        if resolved == root or root in resolved.parents:
            return True
    return False


def _looks_like_case(file_path: Path) -> bool:
    """A ``.toml`` file found in a folder is a case when its table has a case's keys; one
    that does not parse is collected too, so that its error is reported."""
    from derivcheck.errors import DerivcheckError
    from derivcheck.loading import is_case_table, read_table

    if file_path.name == "pyproject.toml":
        return False
    try:
        return is_case_table(read_table(file_path))
    except DerivcheckError:
        return True


def pytest_collect_file(file_path: Path, parent: Any) -> Any:
    config = parent.config
    if file_path.suffix == ".toml" and _wanted(config, file_path):
        if file_path.resolve() in config._derivcheck_named or _looks_like_case(file_path):
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
        self._record("derivcheck_verdict", {"ok": "agree", "mismatch": "disagree"}.get(result.verdict, result.verdict))
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
        from derivcheck.check import DerivativeMismatch, InconclusiveCheck

        if result.verdict == "inconclusive":
            raise InconclusiveCheck(result)
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
def derivcheck(request: Any) -> DerivcheckFixture:
    """derivcheck's checks, with verdicts recorded as JUnit properties (appended to the
    test's ``user_properties`` as ``record_property`` does, without its xunit2 warning)."""
    return DerivcheckFixture(lambda name, value: request.node.user_properties.append((name, value)))
