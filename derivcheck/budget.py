"""Budgets: what a case may cost before derivcheck refuses to run it.

A case file is untrusted input (it arrives in a pull request and runs in CI), so every run
is bounded. Before anything expensive happens, each case's cost is estimated from its
declared sizes -- layers, parameters, values held per pass, finite-difference
evaluations, multiply-adds, time steps, variables, derivative order and count, suite size
-- and a case beyond a limit is refused with a :class:`~derivcheck.errors.CaseError`
(exit code 4) that names the limit, the estimate and how to raise it.

Limits are raised by whoever runs derivcheck, never by the case file itself: on the
command line (``--max-parameters 5000000``) or in the environment
(``DERIVCHECK_MAX_PARAMETERS=5000000``, which worker processes inherit). ``0`` switches a
limit off.

SymPy work that has no size bound of its own (``simplify`` of a closed form shown by
``explain``) runs under :func:`time_limit`; nothing derivcheck computes for a comparison
depends on such a timed step, so results are the same on fast and slow machines.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from derivcheck.errors import CaseError, InvalidArgument


@dataclass(frozen=True)
class Limit:
    """One limit: its name (``--max-<name>`` on the command line), default and meaning."""

    name: str
    default: int
    what: str

    @property
    def option(self) -> str:
        return f"--max-{self.name}"

    @property
    def env(self) -> str:
        return "DERIVCHECK_MAX_" + self.name.upper().replace("-", "_")


LIMITS: dict[str, Limit] = {
    limit.name: limit
    for limit in (
        Limit("cases", 2_000, "cases in one run (a suite's grid counts each combination)"),
        Limit("layers", 500, "layers in one network"),
        Limit("parameters", 2_000_000, "parameters of one network"),
        Limit("values", 50_000_000, "numbers one forward pass holds (samples x every layer's output size)"),
        Limit("fd-evaluations", 500_000, "network forward passes the finite-difference engine makes"),
        Limit("work", 20_000_000_000, "multiply-adds of the finite-difference engine (its passes x the cost of one pass)"),
        Limit("steps", 20_000_000, "layer applications of the finite-difference engine (its passes x the layers and time steps of one pass)"),
        Limit("variables", 8, "independent variables of a PDE case"),
        Limit("derivatives", 200, "distinct partial derivatives a PDE case needs"),
        Limit("entries", 50_000_000, "numbers in the quantities one case compares"),
        Limit("expression-size", 20_000, "nodes of one closed-form derivative SymPy derives (a PDE solution's partials)"),
    )
}
"""Every limit, by name. The defaults let every shipped case run with a wide margin (the
largest, ``lenet-digits``, uses under 1% of ``work``) and refuse sizes whose finite
differences would take hours or whose values would not fit in memory."""

_overrides: dict[str, int] = {}


def configure(values: dict[str, int | None]) -> None:
    """Set limits for this process from the command line (``None`` leaves one as it is),
    and export them so that worker processes see the same."""
    for name, value in values.items():
        if value is None:
            continue
        limit = LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"{limit.option} must be a non-negative integer (0: no limit), got {value!r}")
        _overrides[name] = value
        os.environ[limit.env] = str(value)


def value(name: str) -> int:
    """The limit `name` in force: the command line, else the environment, else the default
    (``0``: no limit)."""
    limit = LIMITS[name]
    if name in _overrides:
        return _overrides[name]
    raw = os.environ.get(limit.env)
    if raw is not None:
        try:
            parsed = int(raw)
        except ValueError:
            raise InvalidArgument(f"${limit.env} must be a non-negative integer (0: no limit), got {raw!r}") from None
        if parsed < 0:
            raise InvalidArgument(f"${limit.env} must be a non-negative integer (0: no limit), got {raw!r}")
        return parsed
    return limit.default


def require(name: str, estimate: float, *, file: str | None, key: str | None = None, detail: str = "") -> None:
    """Raise :class:`CaseError` when `estimate` exceeds limit `name`.

    The message says what the limit counts, the estimate, the limit and how to raise it;
    `detail` names where the cost comes from (e.g. ``"linear layer 0: 1000000 x 10"``)."""
    limit = LIMITS[name]
    allowed = value(name)
    if allowed and estimate > allowed:
        where = f" ({detail})" if detail else ""
        shown = f"more than {_count(allowed)}" if name == "expression-size" else _count(estimate)
        raise CaseError(
            f"too large to run: {limit.what} would be {shown}{where}, beyond the limit of {_count(allowed)}; to allow it, raise the limit with {limit.option} N or ${limit.env} (0: no limit)",
            file=file,
            key=key,
        )


def tree_size(expr: Any, limit: int) -> int:
    """Nodes of SymPy expression `expr`, counted up to ``limit + 1`` (so that counting a
    huge expression stops early)."""
    count = 0
    stack = [expr]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            return count
        stack.extend(getattr(node, "args", ()))
    return count


def _count(number: float) -> str:
    number = float(number)
    if number >= 1e7:
        return f"{number:.2e}"
    return f"{int(number):,}"


# -- networks --------------------------------------------------------------------------------

FD_PASSES_PER_COORDINATE = 6
"""Forward passes per differentiated coordinate (Richardson: steps h, h/2, h/4, each side)."""

OTHER_PASSES = 20
"""Forward and backward passes of every other engine together (a generous bound)."""


def check_network(network: Any, batch: int, *, file: str | None, finite_differences: bool = True, param_grads: bool = True, input_grads: int = 2) -> None:
    """Refuse a network case whose estimated cost exceeds a limit.

    `network` is a built :class:`~derivcheck.problem.Network` (shapes bound, nothing
    allocated); `batch` the number of samples; `param_grads` whether a parameter gradient
    is asked for; `input_grads` how many quantities differentiate by the inputs (dL/dx,
    dy/dx). Call it before parameters or inputs are allocated."""
    layers = network.layers
    require("layers", len(layers), file=file, key="network")
    counts = [layer.param_count() for layer in layers]
    largest = max(range(len(layers)), key=lambda i: counts[i])
    require("parameters", sum(counts), file=file, key="network", detail=f"the largest, layer {largest} ({layers[largest].describe()}), has {_count(counts[largest])}")
    sizes = [float(size) for size in network.sizes]
    held = sum(sizes) + sum(layer.held_values_per_sample() for layer in layers)
    require("values", batch * held, file=file, key="network", detail=f"{batch} sample(s) x {_count(held)} values per sample (outputs, windows, attention matrices, one-hot codes)")
    per_pass = batch * sum(layer.work_per_sample() for layer in layers)
    require("work", OTHER_PASSES * per_pass, file=file, key="network", detail=f"{OTHER_PASSES} passes of the exact engines x {_count(per_pass)} per pass")
    steps = sum(layer.python_steps() for layer in layers)
    coupled = not all(getattr(layer, "per_sample", True) for layer in layers)
    input_coordinates = sizes[0] * (batch if coupled else 1)
    if input_grads and getattr(layers[0], "input_is_differentiable", True):
        require("entries", batch * sizes[0] * max(1.0, sizes[-1]), file=file, key="quantities", detail=f"dy/dx: {batch} x {_count(sizes[-1])} x {_count(sizes[0])}")
    if not finite_differences:
        require("steps", OTHER_PASSES * steps, file=file, key="network", detail=f"{steps} layer application(s) per pass")
        return
    from derivcheck.quantities import FD_FULL_PARAMETERS, PARAM_DIRECTIONS

    # above FD_FULL_PARAMETERS, finite differences take directional derivatives of the parameters
    param_coordinates = (sum(counts) if sum(counts) <= FD_FULL_PARAMETERS else PARAM_DIRECTIONS) if param_grads else 0
    coordinates = param_coordinates + input_grads * input_coordinates
    passes = FD_PASSES_PER_COORDINATE * coordinates
    require(
        "fd-evaluations",
        passes,
        file=file,
        key="network",
        detail=f"{_count(coordinates)} coordinates to perturb x {FD_PASSES_PER_COORDINATE}; leave finite_diff out of engines, or ask for fewer quantities",
    )
    require("work", (passes + OTHER_PASSES) * per_pass, file=file, key="network", detail=f"{_count(passes)} passes x {_count(per_pass)} per pass")
    require("steps", (passes + OTHER_PASSES) * steps, file=file, key="network", detail=f"{_count(passes)} passes x {steps} layer application(s)")


# -- time budgets ---------------------------------------------------------------------------


class TimeBudgetExceeded(BaseException):
    """A step run under :func:`time_limit` ran out of time (a ``BaseException``, so that
    library code catching ``Exception`` does not swallow it)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[bool]:
    """Run the block with a wall-clock budget: :class:`TimeBudgetExceeded` is raised inside
    it after `seconds`. Yields whether the budget is enforced -- only in the main thread of
    a process with ``SIGALRM`` (elsewhere the caller should take its cheap path)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield False
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeBudgetExceeded(f"ran out of its {seconds:g} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if remaining:
            signal.setitimer(signal.ITIMER_REAL, remaining)


DERIVE_SECONDS = 60.0
"""Wall-clock budget of a case's closed-form derivatives at load time (a safety net behind
the ``expression-size`` limit, which is what normally stops a derivation that grows)."""

SIMPLIFY_SECONDS = 2.0
"""Budget of one ``sympy.simplify`` of a closed form that is only shown, never computed with."""


def tidy(expr: Any) -> Any:
    """`expr` simplified for display when SymPy manages it within :data:`SIMPLIFY_SECONDS`
    (and the expression is small), else `expr` itself."""
    from derivcheck._lazy import sympy as sp

    try:
        if sp.count_ops(expr) > 200:
            return expr
    except (TypeError, ValueError, RecursionError):
        return expr
    try:
        with time_limit(SIMPLIFY_SECONDS) as enforced:
            if not enforced:
                return expr
            return sp.simplify(expr)
    except (TimeBudgetExceeded, RecursionError, MemoryError, ValueError, TypeError, ZeroDivisionError):
        return expr


__all__ = ["LIMITS", "Limit", "TimeBudgetExceeded", "configure", "require", "tidy", "time_limit", "value"]
