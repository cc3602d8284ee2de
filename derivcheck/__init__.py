"""derivcheck: prove derivatives right.

Four independent engines -- SymPy's closed form, finite differences, a from-scratch numpy
backprop and torch autograd -- compute the same derivatives, and a dtype-aware tolerance
model compares them, naming the engine that disagrees, where, and by how much.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any

from . import operators
from .api import assert_numpy, assert_operator, assert_torch, check_numpy, check_operator, check_torch
from .case import Case, case_from_dict, discover, load_case, load_cases
from .compare import QuantityResult, Tolerance, compare_quantity
from .engines import ENGINE_NAMES, NETWORK_ENGINES, FiniteDifferences, NumpyBackprop, SymbolicEngine, TorchAutograd, TorchFunc, make_engines
from .errors import CaseError, DerivcheckError, EngineError, ExpressionError, InvalidArgument, InvalidType
from .expr import parse_expression
from .fields import FieldProblem, PDESpec, field_quantities
from .kinks import find_kinks
from .layers import LAYERS, LOSSES
from .problem import Network, Problem
from .pde_case import FIELD_ENGINES, FieldCase
from .check_result import CheckResult, DerivativeMismatch
from .runner import CaseResult, run_any, run_case, run_field_case, run_field_problem, run_problem
from .schedules import Schedule, numpy_schedule, sympy_schedule, torch_schedule
from .score import Mixture, ScoreProblem
from .score_case import ScoreCase, run_score_case, run_score_problem
from .suite import expand_suite
from .values import EngineValue, Skipped

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
    """``dc.strategies`` is imported on first use: it needs Hypothesis (the ``test`` extra)."""
    if name == "strategies":
        import importlib

        try:
            return importlib.import_module(".strategies", __name__)
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("derivcheck.strategies needs Hypothesis: pip install 'derivcheck[test]' (or pip install hypothesis)") from exc
    raise AttributeError(f"module 'derivcheck' has no attribute {name!r}")
