"""Run engines on a problem and compare them: the core loop behind every front end."""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .compare import QuantityResult, Tolerance, compare_quantity
from .engines import Engine
from .kinks import find_kinks, samples_with_kinks
from .problem import Problem
from .quantities import Quantity, expand_quantities
from .values import EngineValue, Skipped

CASE_VERDICTS = ("agree", "disagree", "kink", "error")
SGD_ENGINE = "torch.optim.SGD"

if TYPE_CHECKING:
    from .case import Case


@dataclass
class CaseResult:
    """The outcome of one case: a verdict per quantity and overall.

    The case verdict is ``disagree`` if any quantity disagrees, else ``error`` if any
    quantity is ``error``/``nonfinite`` or an engine crashed, else ``kink`` if any quantity
    is ``kink``, else ``agree``.
    """

    name: str
    quantities: list[QuantityResult]
    engines: list[str]
    file: str | None = None
    description: str = ""
    errors: list[str] = field(default_factory=list)
    kinks: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        verdicts = {q.verdict for q in self.quantities}
        if "disagree" in verdicts:
            return "disagree"
        if self.errors or verdicts & {"error", "nonfinite"}:
            return "error"
        if "kink" in verdicts:
            return "kink"
        return "agree"

    @property
    def crashed(self) -> bool:
        """An engine raised: an internal error, not a verdict on the user's code."""
        return bool(self.errors)

    @property
    def ok(self) -> bool:
        return self.verdict in ("agree", "kink")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "description": self.description,
            "verdict": self.verdict,
            "engines": list(self.engines),
            "quantities": [q.to_dict() for q in self.quantities],
            "errors": list(self.errors),
            "kinks": list(self.kinks),
            "meta": dict(self.meta),
        }


def _kink_mask(q: Quantity, kinky_samples: np.ndarray) -> np.ndarray | None:
    if not kinky_samples.any() or q.kind == "loss":
        return None
    if q.per_sample:
        return np.broadcast_to(kinky_samples.reshape((-1,) + (1,) * (len(q.shape) - 1)), q.shape)
    return np.ones(q.shape, dtype=bool)


def _sgd_values(problem: Problem, results: dict[str, dict[str, Any]]) -> dict[str, EngineValue]:
    """Manual step ``-lr * grad`` from each engine's gradients, plus torch's real optimizer."""
    assert problem.sgd_lr is not None
    names = [f"dL/d{ref.qualified}" for ref in problem.network.params()]
    values: dict[str, EngineValue] = {}
    for engine, result in results.items():
        grads = [result.get(n) for n in names]
        if all(isinstance(g, EngineValue) for g in grads):
            flat = np.concatenate([np.ravel(g.values) for g in grads])  # type: ignore[union-attr]
            errors = [g.error_estimate for g in grads]  # type: ignore[union-attr]
            estimate = None
            if all(e is not None for e in errors):
                estimate = problem.sgd_lr * np.concatenate([np.ravel(e) for e in errors])  # type: ignore[arg-type]
            values[f"{engine} (w - lr*grad)"] = EngineValue(-problem.sgd_lr * flat, dtype=grads[0].dtype, error_estimate=estimate)  # type: ignore[union-attr]
        real = result.get("sgd_step")
        if isinstance(real, EngineValue):
            values[SGD_ENGINE] = real
    return values


def run_problem(
    problem: Problem,
    engines: Sequence[Engine],
    quantities: Sequence[str],
    *,
    name: str = "problem",
    tolerance: Tolerance = Tolerance(),
    file: str | None = None,
    description: str = "",
) -> CaseResult:
    """Compute `quantities` with every engine and compare them.

    An engine that raises does not stop the others: its exception is recorded in
    :attr:`CaseResult.errors` (with the traceback's last line) and the case verdict is
    ``error``.
    """
    qs = expand_quantities(quantities, problem)
    wanted = list(qs)
    if any(q.kind == "sgd_step" for q in qs):
        # the manual step needs every engine's parameter gradients
        wanted = expand_quantities(list(quantities) + ["dL/dparams"], problem)
    results: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    timings: dict[str, float] = {}
    for engine in engines:
        start = time.perf_counter()
        try:
            results[engine.name] = engine.compute(problem, wanted)
        except Exception as exc:  # an engine bug must not hide the other engines' results
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            errors.append(f"engine {engine.name} failed: {last}")
        timings[engine.name] = time.perf_counter() - start

    kinks = find_kinks(problem)
    kinky = samples_with_kinks(kinks, problem.batch)
    group_scale = _group_scales(qs, results)
    compared: list[QuantityResult] = []
    for q in qs:
        if q.kind == "sgd_step":
            values = _sgd_values(problem, results)
            skipped: dict[str, str] = {}
        else:
            values = {e: r[q.name] for e, r in results.items() if isinstance(r.get(q.name), EngineValue)}
            skipped = {e: r[q.name].reason for e, r in results.items() if isinstance(r.get(q.name), Skipped)}
        label = (lambda index, q=q: q.sgd_label(index[0], problem)) if q.kind == "sgd_step" else q.index_label
        compared.append(
            compare_quantity(
                q.name,
                values,
                tolerance=tolerance,
                scale=group_scale.get(q.group) if q.group else None,
                kink_mask=_kink_mask(q, kinky),
                label=label,
                skipped=skipped,
            )
        )
    return CaseResult(
        name=name,
        quantities=compared,
        engines=[e.name for e in engines],
        file=file,
        description=description,
        errors=errors,
        kinks=[str(k) for k in kinks[:20]] + ([f"... {len(kinks) - 20} more"] if len(kinks) > 20 else []),
        timings=timings,
    )


def _group_scales(qs: Sequence[Quantity], results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Max magnitude over every quantity of a group and every engine (finite entries)."""
    scales: dict[str, float] = {}
    for q in qs:
        if not q.group:
            continue
        for result in results.values():
            value = result.get(q.name)
            if isinstance(value, EngineValue):
                finite = np.abs(value.values[np.isfinite(value.values)])
                if finite.size:
                    scales[q.group] = max(scales.get(q.group, 0.0), float(finite.max()))
    return scales


def run_case(case: "Case", *, device: str = "cpu") -> CaseResult:
    """Run a validated :class:`~derivcheck.case.Case` with its engines."""
    from .engines import make_engines

    engines = make_engines(case.engines, device=device, finite_diff=case.finite_diff)
    result = run_problem(
        case.problem,
        engines,
        case.quantities,
        name=case.name,
        tolerance=case.tolerance,
        file=case.file,
        description=case.description,
    )
    result.meta = {"dtype": case.problem.dtype, "seed": case.seed, "device": device, "samples": case.problem.batch, **case.problem.meta}
    return result
