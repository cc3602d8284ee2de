"""derivcheck: prove derivatives right.

Four independent engines -- SymPy's closed form, finite differences, a from-scratch numpy
backprop and torch autograd -- compute the same derivatives, and a dtype-aware tolerance
model compares them, naming the engine that disagrees, where, and by how much.
"""

from __future__ import annotations

from derivcheck._version import __version__

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the public API, for type checkers; at run time each name loads on first use
    from derivcheck import operators
    from derivcheck.check import CheckResult, DerivativeMismatch, Finding, InconclusiveCheck, assert_numpy, assert_operator, assert_torch, check_numpy, check_operator, check_torch
    from derivcheck.kinds.network.case import Case
    from derivcheck.loading import case_from_dict, discover, load_case, load_cases
    from derivcheck.compare import QuantityResult, Tolerance, compare_quantity
    from derivcheck.engines import ENGINE_NAMES, NETWORK_ENGINES, FiniteDifferences, NumpyBackprop, SymbolicEngine, TorchAutograd, TorchFunc, make_engines
    from derivcheck.errors import CaseError, DerivcheckError, EngineError, ExpressionError, InvalidArgument, InvalidType
    from derivcheck.expr import parse_expression
    from derivcheck.fields import FieldProblem, PDESpec, field_quantities
    from derivcheck.kinks import find_kinks
    from derivcheck.layers import LAYERS, LOSSES
    from derivcheck.problem import Network, Problem
    from derivcheck.kinds.pde.case import FIELD_ENGINES, FieldCase
    from derivcheck.runner import CaseResult, run_any, run_case, run_field_problem, run_problem
    from derivcheck.kinds.pde.run import run_field_case
    from derivcheck.schedules import Schedule, numpy_schedule, sympy_schedule, torch_schedule
    from derivcheck.kinds.score.density import Mixture, ScoreProblem
    from derivcheck.kinds.score.case import ScoreCase, run_score_case, run_score_problem
    from derivcheck.suite import expand_suite
    from derivcheck.values import EngineValue, Skipped

_EXPORTS: dict[str, tuple[str, str | None]] = {
    "operators": ("operators", None),
    "assert_numpy": ("check", "assert_numpy"),
    "assert_operator": ("check", "assert_operator"),
    "assert_torch": ("check", "assert_torch"),
    "check_numpy": ("check", "check_numpy"),
    "check_operator": ("check", "check_operator"),
    "check_torch": ("check", "check_torch"),
    "Case": ("kinds.network.case", "Case"),
    "case_from_dict": ("loading", "case_from_dict"),
    "discover": ("loading", "discover"),
    "load_case": ("loading", "load_case"),
    "load_cases": ("loading", "load_cases"),
    "QuantityResult": ("compare", "QuantityResult"),
    "Tolerance": ("compare", "Tolerance"),
    "compare_quantity": ("compare", "compare_quantity"),
    "ENGINE_NAMES": ("engines", "ENGINE_NAMES"),
    "NETWORK_ENGINES": ("engines", "NETWORK_ENGINES"),
    "FiniteDifferences": ("engines", "FiniteDifferences"),
    "NumpyBackprop": ("engines", "NumpyBackprop"),
    "SymbolicEngine": ("engines", "SymbolicEngine"),
    "TorchAutograd": ("engines", "TorchAutograd"),
    "TorchFunc": ("engines", "TorchFunc"),
    "make_engines": ("engines", "make_engines"),
    "CaseError": ("errors", "CaseError"),
    "DerivcheckError": ("errors", "DerivcheckError"),
    "EngineError": ("errors", "EngineError"),
    "ExpressionError": ("errors", "ExpressionError"),
    "InvalidArgument": ("errors", "InvalidArgument"),
    "InvalidType": ("errors", "InvalidType"),
    "parse_expression": ("expr", "parse_expression"),
    "FieldProblem": ("fields", "FieldProblem"),
    "PDESpec": ("fields", "PDESpec"),
    "field_quantities": ("fields", "field_quantities"),
    "find_kinks": ("kinks", "find_kinks"),
    "LAYERS": ("layers", "LAYERS"),
    "LOSSES": ("layers", "LOSSES"),
    "Network": ("problem", "Network"),
    "Problem": ("problem", "Problem"),
    "FIELD_ENGINES": ("kinds.pde.case", "FIELD_ENGINES"),
    "FieldCase": ("kinds.pde.case", "FieldCase"),
    "CheckResult": ("check", "CheckResult"),
    "DerivativeMismatch": ("check", "DerivativeMismatch"),
    "InconclusiveCheck": ("check", "InconclusiveCheck"),
    "Finding": ("check", "Finding"),
    "CaseResult": ("runner", "CaseResult"),
    "run_any": ("runner", "run_any"),
    "run_case": ("runner", "run_case"),
    "run_field_case": ("kinds.pde.run", "run_field_case"),
    "run_field_problem": ("runner", "run_field_problem"),
    "run_problem": ("runner", "run_problem"),
    "Schedule": ("schedules", "Schedule"),
    "numpy_schedule": ("schedules", "numpy_schedule"),
    "sympy_schedule": ("schedules", "sympy_schedule"),
    "torch_schedule": ("schedules", "torch_schedule"),
    "Mixture": ("kinds.score.density", "Mixture"),
    "ScoreProblem": ("kinds.score.density", "ScoreProblem"),
    "ScoreCase": ("kinds.score.case", "ScoreCase"),
    "run_score_case": ("kinds.score.case", "run_score_case"),
    "run_score_problem": ("kinds.score.case", "run_score_problem"),
    "expand_suite": ("suite", "expand_suite"),
    "EngineValue": ("values", "EngineValue"),
    "Skipped": ("values", "Skipped"),
}
"""Public name -> (submodule, attribute; ``None``: the submodule itself). Importing
``derivcheck`` loads none of them: the command line starts (a Dask fork server, argument
errors, ``--help``) before SymPy, torch or the engines are imported."""

__all__ = [
    "Mixture",
    "Schedule",
    "ScoreCase",
    "ScoreProblem",
    "expand_suite",
    "load_cases",
    "numpy_schedule",
    "run_score_case",
    "run_score_problem",
    "sympy_schedule",
    "torch_schedule",
    "CheckResult",
    "DerivativeMismatch",
    "Finding",
    "InconclusiveCheck",
    "assert_numpy",
    "assert_operator",
    "assert_torch",
    "check_numpy",
    "check_operator",
    "check_torch",
    "strategies",
    "ENGINE_NAMES",
    "FIELD_ENGINES",
    "NETWORK_ENGINES",
    "FieldCase",
    "FieldProblem",
    "PDESpec",
    "TorchFunc",
    "field_quantities",
    "operators",
    "run_any",
    "run_field_case",
    "run_field_problem",
    "LAYERS",
    "LOSSES",
    "Case",
    "CaseError",
    "CaseResult",
    "DerivcheckError",
    "EngineError",
    "EngineValue",
    "ExpressionError",
    "FiniteDifferences",
    "InvalidArgument",
    "InvalidType",
    "Network",
    "NumpyBackprop",
    "Problem",
    "QuantityResult",
    "Skipped",
    "SymbolicEngine",
    "Tolerance",
    "TorchAutograd",
    "__version__",
    "case_from_dict",
    "compare_quantity",
    "discover",
    "find_kinks",
    "load_case",
    "make_engines",
    "parse_expression",
    "run_case",
    "run_problem",
]


def __getattr__(name: str) -> Any:
    """Load a public name on first use (see :data:`_EXPORTS`). ``dc.strategies`` needs
    Hypothesis (the ``test`` extra)."""
    if name == "strategies":
        try:
            return importlib.import_module(".strategies", __name__)
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("derivcheck.strategies needs Hypothesis: pip install 'derivcheck[test]' (or pip install hypothesis)") from exc
    try:
        module_name, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'derivcheck' has no attribute {name!r}") from None
    module = importlib.import_module("." + module_name, __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
