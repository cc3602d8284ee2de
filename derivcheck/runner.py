"""Run engines on a problem and compare them: the core loop behind every front end."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from derivcheck.compare import QuantityResult, Tolerance, compare_quantity
from derivcheck.engines import Engine
from derivcheck.kinks import find_kinks, samples_with_kinks
from derivcheck.problem import Problem
from derivcheck.quantities import Quantity, expand_quantities
from derivcheck.values import EngineValue, Skipped
from derivcheck.expr import NUMPY_MODULES

CASE_VERDICTS = ("agree", "disagree", "kink", "error", "skipped")
SGD_ENGINE = "torch.optim.SGD"
CLIP_ENGINE = "torch clip_grad_norm_"
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by (total_norm + 1e-6)

if TYPE_CHECKING:
    from derivcheck.fields import FieldProblem


def verdict_counts(results: Sequence["CaseResult"]) -> dict[str, int]:
    """How many results have each case verdict, in :data:`CASE_VERDICTS` order."""
    return {v: sum(1 for r in results if r.verdict == v) for v in CASE_VERDICTS}


@dataclass
class CaseResult:
    """The outcome of one case: a verdict per quantity and overall.

    The case verdict is ``disagree`` if any quantity disagrees, else ``error`` if any
    quantity is ``error``/``nonfinite`` or an engine crashed, else ``kink`` if any quantity
    is ``kink``, else ``skipped`` if every quantity is (no two chosen engines compute any),
    else ``agree``.
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
    arrays: dict[str, Any] = field(default_factory=dict, repr=False)
    """Raw arrays for plots (points, residual values per engine); not written to JSON."""
    skipped: str = ""
    """Why the case did not run (its device is missing here); verdict ``skipped``."""

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        verdicts = {q.verdict for q in self.quantities}
        if "disagree" in verdicts:
            return "disagree"
        if self.errors or verdicts & {"error", "nonfinite"}:
            return "error"
        if "kink" in verdicts:
            return "kink"
        if verdicts == {"skipped"}:
            return "skipped"
        return "agree"

    @property
    def crashed(self) -> bool:
        """An engine raised: an internal error, not a verdict on the user's code."""
        return bool(self.errors)

    @property
    def ok(self) -> bool:
        """Nothing to fix: agree, kink, or skipped (like a skipped pytest test)."""
        return self.verdict in ("agree", "kink", "skipped")

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
            **({"skipped": self.skipped} if self.skipped else {}),
        }


def _compute_all(engines: Sequence[Engine], problem: Any, wanted: Sequence[Any]) -> tuple[dict[str, dict[str, Any]], list[str], dict[str, float]]:
    """Every engine's results, the failures (an engine that raises does not stop the
    others: its exception's last line is recorded) and each engine's wall time."""
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
    return results, errors, timings


def _kink_mask(q: Quantity, kinky_samples: np.ndarray) -> np.ndarray | None:
    if not kinky_samples.any() or q.kind == "loss":
        return None
    if q.per_sample:
        return np.broadcast_to(kinky_samples.reshape((-1,) + (1,) * (len(q.shape) - 1)), q.shape)
    return np.ones(q.shape, dtype=bool)


def _flat_gradients(problem: Problem, result: dict[str, Any]) -> EngineValue | None:
    """One engine's parameter gradients concatenated in ``state_dict`` order (with their
    error estimates when it has them), or ``None`` when some gradient is missing."""
    grads = [result.get(f"dL/d{ref.qualified}") for ref in problem.network.params()]
    if not all(isinstance(g, EngineValue) for g in grads):
        return None
    errors = [g.error_estimate for g in grads]  # type: ignore[union-attr]
    estimate = np.concatenate([np.ravel(e) for e in errors]) if all(e is not None for e in errors) else None
    flat = np.concatenate([np.ravel(g.values) for g in grads])  # type: ignore[union-attr]
    return EngineValue(flat, dtype=grads[0].dtype, error_estimate=estimate)  # type: ignore[union-attr]


def _derived_from_gradients(
    problem: Problem, results: dict[str, dict[str, Any]], suffix: str, transform: Callable[[np.ndarray], tuple[float, np.ndarray]], real_name: str, real_label: str
) -> dict[str, EngineValue]:
    """``transform(g) -> (error factor, value)`` applied to each engine's flat gradients
    (labelled ``"<engine> <suffix>"``), plus torch's real result of `real_name`."""
    values: dict[str, EngineValue] = {}
    for engine, result in results.items():
        flat = _flat_gradients(problem, result)
        if flat is not None:
            factor, value = transform(flat.values)
            estimate = None if flat.error_estimate is None else factor * flat.error_estimate
            values[f"{engine} {suffix}"] = EngineValue(value, dtype=flat.dtype, error_estimate=estimate)
        real = result.get(real_name)
        if isinstance(real, EngineValue):
            values[real_label] = real
    return values


def _sgd_values(problem: Problem, results: dict[str, dict[str, Any]]) -> dict[str, EngineValue]:
    """Manual step ``-lr * grad`` from each engine's gradients, plus torch's real optimizer."""
    lr = problem.sgd_lr
    assert lr is not None
    return _derived_from_gradients(problem, results, "(w - lr*grad)", lambda g: (lr, -lr * g), "sgd_step", SGD_ENGINE)


def _clip_values(problem: Problem, results: dict[str, dict[str, Any]]) -> dict[str, EngineValue]:
    """Each engine's gradients clipped like ``clip_grad_norm_``, plus torch's real call."""
    max_norm = problem.clip_max_norm
    assert max_norm is not None

    def clip(g: np.ndarray) -> tuple[float, np.ndarray]:
        coefficient = min(1.0, max_norm / (float(np.linalg.norm(g)) + CLIP_EPS))
        return 2 * coefficient, coefficient * g  # the norm's own error at most doubles it

    return _derived_from_gradients(problem, results, "(clipped)", clip, "clip_grad", CLIP_ENGINE)


def _projected_values(name: str, gradient_names: Sequence[str], results: dict[str, dict[str, Any]], note: str) -> tuple[dict[str, EngineValue], dict[str, str]]:
    """Quantity `name` = gradients along the fixed random directions of
    :func:`~derivcheck.quantities.param_directions`: the finite-difference engine computes
    it itself (directional derivatives); every other engine's full gradients (the
    quantities `gradient_names`, concatenated) are projected onto the directions and
    labelled with the engine's own name."""
    from derivcheck.quantities import param_directions

    values: dict[str, EngineValue] = {}
    skipped: dict[str, str] = {}
    for engine, result in results.items():
        own = result.get(name)
        if isinstance(own, EngineValue):
            values[engine] = own
            continue
        grads = [result.get(g) for g in gradient_names]
        if grads and all(isinstance(g, EngineValue) for g in grads):
            flat = np.concatenate([np.ravel(g.values) for g in grads])  # type: ignore[union-attr]
            values[engine] = EngineValue(param_directions(flat.size) @ flat, dtype=grads[0].dtype, note=note)  # type: ignore[union-attr]
            continue
        reason = own.reason if isinstance(own, Skipped) else next((g.reason for g in grads if isinstance(g, Skipped)), "")
        if reason:
            skipped[engine] = reason
    return values, skipped


def time_step_gradient_norms(problem: Problem, results: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """For sequence inputs ``(T, F)``: each engine's ``||dL/dx_t||`` per time step t (over
    the batch), which shows gradients vanishing or exploding through time."""
    shape = problem.network.shapes[0] if problem.network.shapes else ()
    if len(shape) != 2:
        return {}
    norms = {}
    for engine, result in results.items():
        value = result.get("dL/dx")
        if isinstance(value, EngineValue):
            per_step = value.values.reshape(problem.batch, shape[0], shape[1])
            norms[engine] = [float(v) for v in np.sqrt((per_step**2).sum(axis=(0, 2)))]
    return norms


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
    if any(q.kind in ("sgd_step", "clip_grad") for q in qs):
        # the manual step needs every engine's parameter gradients
        wanted = expand_quantities(list(quantities) + ["dL/dparams"], problem)
    results, errors, timings = _compute_all(engines, problem, wanted)

    kinks = find_kinks(problem)
    kinky = samples_with_kinks(kinks, problem.batch)
    group_scale = _group_scales(qs, results)
    compared: list[QuantityResult] = []
    for q in qs:
        if q.kind in ("sgd_step", "clip_grad"):
            values = _sgd_values(problem, results) if q.kind == "sgd_step" else _clip_values(problem, results)
            skipped: dict[str, str] = {}
        elif q.kind == "param_directions":
            gradients = [f"dL/d{ref.qualified}" for ref in problem.network.params()]
            values, skipped = _projected_values(q.name, gradients, results, "its dL/dparams, projected")
        else:
            values = {e: r[q.name] for e, r in results.items() if isinstance(r.get(q.name), EngineValue)}
            skipped = {e: r[q.name].reason for e, r in results.items() if isinstance(r.get(q.name), Skipped)}
        label = (lambda index, q=q: q.sgd_label(index[0], problem)) if q.kind in ("sgd_step", "clip_grad") else q.index_label
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
    meta: dict[str, Any] = {}
    norms = gradient_norms(qs, results)
    if norms:
        meta["gradient_norms"] = norms
    steps = time_step_gradient_norms(problem, results)
    if steps:
        meta["time_step_gradient_norms"] = steps
    return CaseResult(
        name=name,
        quantities=compared,
        engines=[e.name for e in engines],
        file=file,
        description=description,
        errors=errors,
        kinks=[str(k) for k in kinks[:20]] + ([f"... {len(kinks) - 20} more"] if len(kinks) > 20 else []),
        timings=timings,
        meta=meta,
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


ZERO_ENGINE = "zero (MMS)"
CASE_FORCING_ENGINE = "forcing (case file)"


def run_field_problem(
    problem: "FieldProblem",
    engines: Sequence[Engine],
    quantities: Sequence[str] | None = None,
    *,
    name: str = "problem",
    tolerance: Tolerance = Tolerance(),
    file: str | None = None,
    description: str = "",
    zero_residual: bool = True,
) -> CaseResult:
    """Compute a field problem's quantities with every engine and compare them.

    Besides the engines, two reference columns join the comparison: on the exact solution
    every ``residual`` is compared with ``zero (MMS)`` (a manufactured solution must make the
    residual vanish), and every ``forcing`` with the case file's own formula when it gives
    one (``forcing (case file)``). Sums of terms -- operators, forcing, residuals -- are
    judged against the magnitude of the PDE's terms (the largest derivative, operator,
    forcing or field value of the problem), since they may cancel to zero.
    """
    import sympy as sp

    from derivcheck.fields import exact_kinks, field_quantities

    qs = field_quantities(problem, quantities)
    # Every derivative of the PDE is computed (reported or not): the largest of them sets
    # the scale against which sums of terms (operators, forcing, residuals) are judged.
    terms = [q for q in field_quantities(problem, None) if q.kind in ("derivative", "operator")]
    wanted = qs + [q for q in terms if q.name not in {x.name for x in qs}]
    results, errors, timings = _compute_all(engines, problem, wanted)

    kinky = exact_kinks(problem)
    magnitude = 0.0
    for q in wanted:
        if q.kind in ("derivative", "operator", "forcing"):
            for r in results.values():
                value = r.get(q.name)
                if isinstance(value, EngineValue) and np.isfinite(value.values).any():
                    magnitude = max(magnitude, float(np.abs(value.values[np.isfinite(value.values)]).max()))
    # the exact fields and the forcing the residual uses are terms too (case data, no engine)
    formulas = list(problem.solution_exprs().values()) if problem.kind == "exact" else []
    formulas += [problem.spec.with_constants(f) for f in problem.spec.forcing_for_residual().values()]
    for expr in formulas:
        fn = sp.lambdify([problem.spec.variable_symbols], expr, modules=NUMPY_MODULES)
        with np.errstate(all="ignore"):
            vals = np.broadcast_to(np.asarray(fn(list(problem.points.T)), dtype=float), (problem.n_points,))
        if np.isfinite(vals).any():
            magnitude = max(magnitude, float(np.abs(vals[np.isfinite(vals)]).max()))
    group_scale = _group_scales(qs, results)  # type: ignore[arg-type]

    compared: list[QuantityResult] = []
    for q in qs:
        values = {e: r[q.name] for e, r in results.items() if isinstance(r.get(q.name), EngineValue)}
        skipped = {e: r[q.name].reason for e, r in results.items() if isinstance(r.get(q.name), Skipped)}
        if q.kind == "pinn_directions":
            assert problem.network is not None
            gradients = [f"dL{q.term}/d{ref.qualified}" for ref in problem.network.params()]
            values, skipped = _projected_values(q.name, gradients, results, "its PINN gradients, projected")
        scale = None
        if q.kind in ("operator", "forcing", "residual"):
            scale = magnitude
        if q.kind == "residual":
            if problem.kind == "exact" and zero_residual:
                values[ZERO_ENGINE] = EngineValue(np.zeros(q.shape), note="a manufactured solution makes the residual vanish")
        if q.kind == "forcing" and q.equation in problem.spec.user_forcing:
            expr = problem.spec.with_constants(problem.spec.user_forcing[q.equation])
            fn = sp.lambdify([problem.spec.variable_symbols], expr, modules=NUMPY_MODULES)
            with np.errstate(all="ignore"):
                user = np.broadcast_to(np.asarray(fn(list(problem.points.T)), dtype=float), q.shape).copy()
            values[CASE_FORCING_ENGINE] = EngineValue(user, note="the forcing formula written in the case file")
        if q.group and scale is None:
            scale = group_scale.get(q.group)
        mask = None
        if kinky.any() and q.order >= 1 and q.per_sample:
            mask = np.broadcast_to(kinky.reshape((-1,) + (1,) * (len(q.shape) - 1)), q.shape)
        compared.append(compare_quantity(q.name, values, tolerance=tolerance, scale=scale, kink_mask=mask, label=q.index_label, skipped=skipped))
    kinks = [f"point {int(i)} (" + ", ".join(f"{v:.4g}" for v in problem.points[i]) + ")" for i in np.flatnonzero(kinky)[:20]]
    meta: dict[str, Any] = {}
    norms = gradient_norms(qs, results)
    if norms:
        meta["gradient_norms"] = norms
    arrays: dict[str, Any] = {"points": problem.points}
    residual = next((q for q in qs if q.kind == "residual"), None)
    if residual is not None:
        arrays["residual"] = {e: r[residual.name].values for e, r in results.items() if isinstance(r.get(residual.name), EngineValue)}
    return CaseResult(
        name=name,
        quantities=compared,
        engines=[e.name for e in engines],
        file=file,
        description=description,
        errors=errors,
        kinks=kinks,
        timings=timings,
        meta=meta,
        arrays=arrays,
    )


def gradient_norms(qs: Sequence[Any], results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per engine, per loss term (``L`` of a network case; ``L_r``, ``L_b`` of a PINN), the
    2-norm of the gradient w.r.t. each parameter tensor: the vanishing/exploding-gradient
    view, layer by layer."""
    norms: dict[str, dict[str, dict[str, float]]] = {}
    for q in qs:
        if q.kind not in ("pinn_grad", "param_grad"):
            continue
        label = f"L_{q.term}" if q.kind == "pinn_grad" else "L"
        for engine, result in results.items():
            value = result.get(q.name)
            if isinstance(value, EngineValue):
                term = norms.setdefault(engine, {}).setdefault(label, {})
                term[q.param] = float(np.linalg.norm(value.values))
    return norms


def preferred_gradient_norms(case: CaseResult) -> tuple[str, dict[str, dict[str, float]]] | None:
    """The gradient norms to show for a case: torch's when it has them, else the first
    engine's; ``None`` when the case has none."""
    norms = case.meta.get("gradient_norms")
    if not norms:
        return None
    engine = "torch" if "torch" in norms else next(iter(norms))
    return engine, norms[engine]


def run_case(case: Any, *, device: str = "cpu") -> list[CaseResult]:
    """Run a loaded case of any kind -- network, PDE, GAN, score, or one registered in
    :mod:`derivcheck.case_kinds` -- with its kind's runner; always a list of results (a PDE
    case gives one per checked field). The case's own ``device`` wins over `device`; a case
    for ``cuda`` on a machine without CUDA is one ``skipped`` result saying so."""
    from derivcheck.case_kinds import kind_of_case

    device = case.device or device
    if device == "cuda":
        from derivcheck.engines import cuda_available

        if not cuda_available():
            reason = "the case runs on device cuda, and torch.cuda.is_available() is False here (no GPU, or a CPU-only torch build)"
            return [CaseResult(name=case.name, quantities=[], engines=list(case.engines), file=case.file, description=case.description, meta={"device": device}, skipped=reason)]
    return list(kind_of_case(case).runner()(case, device=device))


run_any = run_case
"""The former name of :func:`run_case` (kept so that existing code runs)."""
