"""Check your own derivative code: ``check_torch``, ``check_numpy``, ``check_operator``.

Each compares the derivatives your code produces with independent references and returns
a :class:`~derivcheck.check.result.CheckResult`; the ``assert_*`` twins raise
:class:`~derivcheck.check.result.DerivativeMismatch` (a wrong derivative) or
:class:`~derivcheck.check.result.InconclusiveCheck` (evidence too weak to prove it right),
both ``AssertionError``, instead, so they drop into any test suite. Every ``ok = False`` rests on evidence beyond its noise
bound (see :mod:`derivcheck.check.result`).
"""

from __future__ import annotations

from typing import Any

from derivcheck.check.numpy_check import check_numpy
from derivcheck.check.operator_check import check_operator
from derivcheck.check.result import CheckResult, DerivativeMismatch, Finding, InconclusiveCheck
from derivcheck.check.torch_check import check_torch

__all__ = ["CheckResult", "DerivativeMismatch", "Finding", "InconclusiveCheck", "assert_numpy", "assert_operator", "assert_torch", "check_numpy", "check_operator", "check_torch"]


def _raise_unless_ok(result: CheckResult) -> CheckResult:
    if result.verdict == "mismatch":
        raise DerivativeMismatch(result)
    if result.verdict == "inconclusive":
        raise InconclusiveCheck(result)
    return result


def assert_torch(fn: Any, *inputs: Any, **options: Any) -> CheckResult:
    """:func:`check_torch`, raising :class:`DerivativeMismatch` (or
    :class:`InconclusiveCheck`) unless ``ok``."""
    return _raise_unless_ok(check_torch(fn, *inputs, **options))


def assert_numpy(forward: Any, backward: Any, *inputs: Any, **options: Any) -> CheckResult:
    """:func:`check_numpy`, raising :class:`DerivativeMismatch` unless ``ok``."""
    return _raise_unless_ok(check_numpy(forward, backward, *inputs, **options))


def assert_operator(op_fn: Any, operator: str, variables: Any, **options: Any) -> CheckResult:
    """:func:`check_operator`, raising :class:`DerivativeMismatch` unless ``ok``."""
    return _raise_unless_ok(check_operator(op_fn, operator, variables, **options))
