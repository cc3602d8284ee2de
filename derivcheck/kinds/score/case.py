"""Score cases: a Gaussian (mixture) density, a DDPM schedule and times; loading and running.

A score case file::

    name = "score-gaussian-mixture"
    seed = 0
    density = { weights = [0.5, 0.5], means = [[-1.0, 0.0], [1.0, 0.5]],
                covariances = [[[0.3, 0.1], [0.1, 0.2]], [[0.25, 0.0], [0.0, 0.4]]] }
    # or one Gaussian:  density = { mean = [0.0, 1.0], covariance = [[1.0, 0.3], [0.3, 0.5]] }
    diffusion = { schedule = "cosine", steps = 1000, times = [0, 10, 300, 800] }
    points = 8            # per time, drawn from p_t with the seed
    hutchinson = 256      # Rademacher vectors per point for the divergence estimate (0: off)
    quantities = ["score", "eps_star", "pf_ode_divergence"]   # optional subset
    engines = ["symbolic", "finite_diff", "numpy", "torch"]   # optional subset (>= 2)
    tolerance = { fd_safety = 10.0 }
    finite_diff = { method = "richardson" }

Running it gives one result per time, named ``<name>[t=<t>]`` (see :mod:`derivcheck.kinds.score.density`
for the quantities). Every engine works in float64.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from derivcheck.case_fields import CaseBase
from derivcheck.compare import Tolerance, compare_quantity
from derivcheck.errors import CaseError
from derivcheck.schedules import SCHEDULES, Schedule, numpy_schedule
from derivcheck.kinds.score.density import HUTCHINSON, PF_DIVERGENCE, SCORE_QUANTITIES, Mixture, ScoreProblem

SCORE_KEYS = ("name", "description", "seed", "density", "diffusion", "points", "hutchinson", "quantities", "engines", "tolerance", "finite_diff")
DIFFUSION_KEYS = ("schedule", "steps", "beta_start", "beta_end", "times")
SCORE_ENGINES = ("symbolic", "finite_diff", "numpy", "torch")
HUTCHINSON_ENGINE = "torch Hutchinson"
MAX_DIM = 4
MAX_COMPONENTS = 8
MAX_POINTS = 1000
MAX_HUTCHINSON = 100_000


@dataclass(kw_only=True)
class ScoreCase(CaseBase):
    """A validated score case (see the module docstring)."""

    mixture: Mixture
    schedule: Schedule
    times: list[int]
    points: int
    quantities: list[str]
    hutchinson: int = 256
    """``"cpu"`` or ``"cuda"`` from the case file; ``None``: the run's ``--device``."""

    def problems(self) -> list[ScoreProblem]:
        """One :class:`ScoreProblem` per time, its points drawn from ``p_t`` (seeded)."""
        abar = numpy_schedule(self.schedule)[1]
        out = []
        for t in self.times:
            rng = np.random.default_rng([self.seed, 5, t])
            x0 = self.mixture.sample(rng, self.points)
            a = float(abar[t])
            x = np.sqrt(a) * x0 + np.sqrt(1 - a) * rng.standard_normal(x0.shape)
            z = rng.standard_normal(x0.shape)
            out.append(ScoreProblem(self.mixture, self.schedule, t, x, z, self.hutchinson, self.seed))
        return out

    def summary(self) -> dict[str, Any]:
        kind = "Gaussian" if self.mixture.components == 1 else f"{self.mixture.components}-component Gaussian mixture"
        return {
            "name": self.name, "file": self.file, "description": self.description, "kind": "score",
            "network": f"{kind} in {self.mixture.dim}-D, {self.schedule.describe()}, times {self.times}", "loss": None,
            "samples": self.points, "dtype": "float64", "quantities": list(self.quantities), "engines": list(self.engines),
        }  # fmt: skip


def _array(reader: Any, name: str, ndim: int, example: str) -> np.ndarray:
    value = reader.get(name, list, required=True, what=example)
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise reader.error("must be a rectangular array of numbers", name, value, example) from None
    if array.ndim != ndim or array.size == 0 or any(isinstance(v, bool) for v in np.ravel(np.asarray(value, dtype=object))):
        raise reader.error(f"must be a {ndim}-D array of numbers", name, value, example)
    return array


def _mixture(spec: Any, file: str | None) -> Mixture:
    from derivcheck.case_fields import _Reader

    if not isinstance(spec, dict):
        raise CaseError("must be a table", file=file, key="density", value=spec, allowed="{ mean = [0.0, 0.0], covariance = [[1.0, 0.0], [0.0, 1.0]] } or { weights, means, covariances }")
    reader = _Reader(spec, file, "density.")
    if "mean" in spec or "covariance" in spec:
        reader.check_keys(("mean", "covariance"))
        mean = _array(reader, "mean", 1, "[0.0, 1.0]")
        cov = _array(reader, "covariance", 2, "[[1.0, 0.3], [0.3, 0.5]]")
        mixture = Mixture(np.ones(1), mean[None], cov[None])
    else:
        reader.check_keys(("weights", "means", "covariances"))
        mixture = Mixture(_array(reader, "weights", 1, "[0.5, 0.5]"), _array(reader, "means", 2, "[[-1.0, 0.0], [1.0, 0.5]]"), _array(reader, "covariances", 3, "[[[0.3, 0.1], [0.1, 0.2]], ...]"))
    problem = mixture.check()
    if problem:
        raise CaseError(problem, file=file, key="density")
    if mixture.dim > MAX_DIM or mixture.components > MAX_COMPONENTS:
        raise CaseError(
            f"too large for the symbolic engine: {mixture.components} components in {mixture.dim}-D",
            file=file,
            key="density",
            allowed=f"at most {MAX_COMPONENTS} components in at most {MAX_DIM} dimensions",
        )
    return mixture


def _diffusion(spec: Any, file: str | None) -> tuple[Schedule, list[int]]:
    from derivcheck.case_fields import _Reader

    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise CaseError("must be a table", file=file, key="diffusion", value=spec, allowed='{ schedule = "linear", steps = 1000, times = [0, 10, 500] }')
    reader = _Reader(spec, file, "diffusion.")
    reader.check_keys(DIFFUSION_KEYS)
    kind = reader.get("schedule", str, "linear")
    if kind not in SCHEDULES:
        raise reader.error("unknown schedule", "schedule", kind, ", ".join(SCHEDULES))
    schedule = Schedule(kind, reader.get("steps", int, 1000), reader.get("beta_start", float, 1e-4), reader.get("beta_end", float, 0.02))
    problem = schedule.check()
    if problem:
        raise CaseError(problem, file=file, key="diffusion")
    times = reader.get("times", list, [0, 10, 100, schedule.steps // 2])
    if not times or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= schedule.steps for t in times) or len(set(times)) != len(times):
        raise reader.error("must be distinct timesteps", "times", times, f"integers in 0..{schedule.steps} (0: the data density itself)")
    return schedule, list(times)


def load_score_case(table: Mapping[str, Any], *, file: str | None, overrides: Mapping[str, Any], base_dir: Any = None) -> ScoreCase:
    """Build a :class:`ScoreCase` from a case table with a ``density`` key (see the module
    docstring); raises :class:`~derivcheck.errors.CaseError` naming file, key and value."""
    from derivcheck.case_fields import _finite_diff, _Reader, _tolerance, validate_engine_names

    reader = _Reader(table, file)
    reader.check_keys(SCORE_KEYS)
    name = reader.get("name", str, "score")
    seed = overrides["seed"] if overrides.get("seed") is not None else reader.get("seed", int, 0)
    if seed < 0:
        raise reader.error("must be a non-negative integer", "seed", seed)
    mixture = _mixture(table.get("density"), file)
    schedule, times = _diffusion(table.get("diffusion"), file)
    points = reader.get("points", int, 8)
    if not 1 <= points <= MAX_POINTS:
        raise reader.error("out of range", "points", points, f"1..{MAX_POINTS}")
    hutchinson = reader.get("hutchinson", int, 256)
    if not (hutchinson == 0 or 2 <= hutchinson <= MAX_HUTCHINSON):
        raise reader.error("out of range", "hutchinson", hutchinson, f"0 (off) or 2..{MAX_HUTCHINSON} vectors per point")
    from derivcheck import budget

    probes = max(hutchinson, 1)
    per_time = float(points) * probes * mixture.dim * max(mixture.components, 1)
    budget.require(
        "values",
        per_time * len(times),
        file=file,
        key="hutchinson",
        detail=f"{points} point(s) x {probes} probe vector(s) x {mixture.dim} dimension(s) x {mixture.components} component(s) x {len(times)} time(s)",
    )
    budget.require("work", 20.0 * per_time * mixture.dim * len(times), file=file, key="hutchinson", detail="the divergence estimates of every engine")
    quantities = reader.get("quantities", list, list(SCORE_QUANTITIES))
    unknown = [q for q in quantities if q not in SCORE_QUANTITIES]
    if unknown or not quantities:
        raise reader.error("unknown quantity", "quantities", unknown[0] if unknown else quantities, ", ".join(SCORE_QUANTITIES))
    engines = overrides.get("engines") or reader.get("engines", list, list(SCORE_ENGINES))
    validate_engine_names(engines, file=file, key="engines")
    return ScoreCase(
        name=name, mixture=mixture, schedule=schedule, times=times, points=points, engines=list(engines), quantities=list(quantities), hutchinson=hutchinson,
        description=reader.get("description", str, ""), file=file, seed=seed, tolerance=_tolerance(table.get("tolerance"), file), finite_diff=_finite_diff(table.get("finite_diff"), file),
    )  # fmt: skip


def _engine_values(engine: str, problem: ScoreProblem, quantities: Sequence[str], device: str, finite_diff: Mapping[str, Any]) -> dict[str, Any]:
    if engine == "symbolic":
        from derivcheck.kinds.score.engines.symbolic import compute_score

        return compute_score(problem, quantities)
    if engine == "numpy":
        from derivcheck.kinds.score.engines.numpy_backprop import compute_score as numpy_score

        return numpy_score(problem, quantities)
    if engine == "torch":
        from derivcheck.kinds.score.engines.torch_autograd import compute_score as torch_score

        return torch_score(problem, quantities, device)
    from derivcheck.kinds.score.engines.finite_diff import compute_score as fd_score

    return fd_score(problem, quantities, finite_diff.get("method", "richardson"), finite_diff.get("step"))


def run_score_problem(
    problem: ScoreProblem, engines: Sequence[str], quantities: Sequence[str], *, name: str = "score", tolerance: Tolerance = Tolerance(),
    device: str = "cpu", finite_diff: Mapping[str, Any] | None = None, file: str | None = None, description: str = "",
) -> Any:  # fmt: skip
    """Every engine's score quantities at one time, compared; a :class:`~derivcheck.runner.CaseResult`."""
    from derivcheck.runner import CaseResult

    wanted = [q for q in quantities if q in problem.quantities]
    results: dict[str, dict[str, Any]] = {}
    errors, timings, skipped = [], {}, {}
    for engine in engines:
        if engine not in SCORE_ENGINES:
            skipped[engine] = f"{engine} does not compute score quantities (the torch engine covers torch)"
            continue
        start = time.perf_counter()
        try:
            results[engine] = _engine_values(engine, problem, wanted, device, finite_diff or {})
        except Exception as exc:  # one engine's failure must not hide the others
            errors.append(f"engine {engine} failed: " + traceback.format_exception_only(type(exc), exc)[-1].strip())
        timings[engine] = time.perf_counter() - start
    hutchinson = results.get("torch", {}).pop(HUTCHINSON, None)
    beta_all, abar_all = numpy_schedule(problem.schedule)
    beta, abar = float(beta_all[problem.t]), float(abar_all[problem.t])
    compared = []
    for quantity in wanted:
        values = {engine: r[quantity] for engine, r in results.items() if quantity in r}
        scale = None
        if quantity == PF_DIVERGENCE:
            if hutchinson is not None:
                values[HUTCHINSON_ENGINE] = hutchinson
            # -beta/2 (d + tr H) cancels where p_t is nearly N(0, I): judge it on the size
            # of its terms, not of the (tiny) difference
            largest = max((float(np.max(np.abs(v.values))) for v in values.values()), default=0.0)
            scale = max(largest, 0.5 * beta * problem.mixture.dim)
        compared.append(compare_quantity(quantity, values, tolerance=tolerance, scale=scale, label=_label(problem, quantity), skipped=skipped))
    meta: dict[str, Any] = {
        "t": problem.t, "abar_t": abar, "schedule": problem.schedule.describe(), "points": int(problem.points.shape[0]),
        "components": problem.mixture.components, "dim": problem.mixture.dim, "dtype": "float64", "device": device,
    }  # fmt: skip
    if hutchinson is not None:
        meta["hutchinson_samples"] = problem.hutchinson_samples
        meta["hutchinson_max_stderr"] = float(np.max(hutchinson.error_estimate))
    engine_names = list(results) + ([HUTCHINSON_ENGINE] if hutchinson is not None else [])
    return CaseResult(name=name, quantities=compared, engines=engine_names, file=file, description=description, errors=errors, timings=timings, meta=meta)


def _label(problem: ScoreProblem, quantity: str) -> Any:
    def label(index: tuple[int, ...]) -> str:
        point = f"point {index[0]} (x = {np.round(problem.points[index[0]], 4).tolist()})" if index else "value"
        return point + (f" [{', '.join(map(str, index[1:]))}]" if len(index) > 1 else "")

    return label


def run_score_case(case: ScoreCase, *, device: str = "cpu") -> list[Any]:
    """One result per time of the case."""
    out = []
    for problem in case.problems():
        result = run_score_problem(
            problem, case.engines, case.quantities, name=f"{case.name}[t={problem.t}]", tolerance=case.tolerance, device=device,
            finite_diff=case.finite_diff, file=case.file, description=case.description,
        )  # fmt: skip
        result.meta["seed"] = case.seed
        out.append(result)
    return out
