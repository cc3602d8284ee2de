"""``check_operator``: a PDE operator written with torch autograd, against SymPy.

Your operator runs on seeded manufactured fields and random tanh networks; SymPy's closed
form, derivcheck's own torch evaluation and finite differences are the references, and
your operator is the ``user`` column. Written for PINN code as people write it: the field
``u`` may be expected as ``(P,)`` or ``(P, 1)`` (both are tried), the residual may return
``(P,)`` or ``(P, 1)``, and it may call ``requires_grad_()``, ``clone()`` or ``detach()``
on the points it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from derivcheck.compare import Tolerance
from derivcheck.errors import InvalidArgument, InvalidType
from derivcheck.values import EngineValue
from derivcheck.check.evidence import OPERATOR_WORDS, explain
from derivcheck.check.noise import magnitude_floor, noisy_runs, observed, spread
from derivcheck.check.preserve import leaves_state_unchanged
from derivcheck.check.result import CheckResult


OPERATOR_TOLERANCE = Tolerance(exact_factors=(("float32", 256.0),))
"""The references (SymPy, finite differences, derivcheck's own autograd: float64) compare
with one another at ``4500 eps``; a float32 operator -- whose rounding noise is measured --
is held to ``256 eps`` (3e-5) plus that noise, as ``check_torch`` holds float32 code."""


def _dtype_name(dtype: Any) -> str:
    return "float64" if str(dtype).endswith("float64") else "float32"


def _manufactured_fields(variables: Sequence[str], fields: Sequence[str], count: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """Seeded smooth closed forms, one formula per field, for each of `count` fields:
    ``sin(a.x + b) * exp(c.x / 2) + sum d_i x_i^2 + e`` with random coefficients."""
    out = []
    for _ in range(count):
        formulas = {}
        for _name in fields:
            a, c, d = rng.uniform(0.5, 2.0, len(variables)), rng.uniform(-1.0, 1.0, len(variables)), rng.uniform(-1.0, 1.0, len(variables))
            b, e = rng.uniform(-1.0, 1.0, 2)
            lin_a = " + ".join(f"{ai:.6f}*{v}" for ai, v in zip(a, variables))
            lin_c = " + ".join(f"{ci:.6f}*{v}" for ci, v in zip(c, variables))
            quad = " + ".join(f"{di:.6f}*{v}**2" for di, v in zip(d, variables))
            formulas[_name] = f"sin({lin_a} + {b:.6f}) * exp(({lin_c})/2) + {quad} + {e:.6f}"
        out.append(formulas)
    return out


class _UserOperator:
    """An engine that evaluates the user's operator (``op_fn(u, x)``) as the residual."""

    name = "user"

    def __init__(self, op_fn: Callable[..., Any], dtype: Any, samples: int, seed: int):
        self.op_fn = op_fn
        self.dtype = dtype
        self.samples = samples
        self.seed = seed
        self.style: tuple[bool, bool] | None = None  # (fields as (P, 1), points require grad)

    def compute(self, problem: Any, quantities: Sequence[Any]) -> dict[str, Any]:
        import torch

        from derivcheck.evaluate import Evaluator
        from derivcheck.values import Skipped

        spec = problem.spec
        if problem.kind == "network":
            model = problem.network.torch_model(problem.params, self.dtype)

        def field(index: int, name: str, column: bool) -> Callable[[Any], Any]:
            def u(x: Any) -> Any:
                if problem.kind == "network":
                    value = model(x)[:, index]
                else:
                    env = {s: x[:, i] for i, s in enumerate(spec.variable_symbols)}
                    value = Evaluator("torch", env, {}, None, like=x[:, 0])(problem.solution_exprs()[name])
                return value.unsqueeze(-1) if column else value

            return u

        def evaluate(style: tuple[bool, bool]) -> np.ndarray:
            column, marked = style
            callables = {name: field(i, name, column) for i, name in enumerate(spec.fields)}
            x = torch.tensor(problem.points, dtype=self.dtype, requires_grad=marked)
            value = self.op_fn(callables[spec.fields[0]] if len(spec.fields) == 1 else callables, x)
            if not isinstance(value, torch.Tensor):
                raise InvalidType(f"op_fn must return a tensor, got {type(value).__name__}")
            if value.numel() != problem.n_points:
                raise InvalidArgument(f"op_fn must return one value per point ({problem.n_points}), got shape {tuple(value.shape)}")
            return value.detach().to(torch.float64).numpy(force=True).reshape(-1).copy()

        result: dict[str, Any] = {}
        for q in quantities:
            if q.kind != "residual":
                result[q.name] = Skipped("the user's operator gives the operator's value only")
                continue
            # the styles PINN code is written in: fields as (P,) or (P, 1), points handed over
            # requiring grad, or plain (for code that does x = x.clone(); x.requires_grad = True)
            attempts = [self.style] if self.style is not None else [(False, True), (True, True), (False, False), (True, False)]
            failure: Exception | None = None
            for style in attempts:
                try:
                    values = evaluate(style)
                except Exception as exc:  # noqa: BLE001 - retried in the next style
                    failure = failure or exc
                    continue
                self.style = style
                break
            else:
                assert failure is not None
                tried = "; tried u(x) -> (P,) and (P, 1), points with and without requires_grad" if len(attempts) > 1 else ""
                if isinstance(failure, (InvalidType, InvalidArgument)):
                    raise type(failure)(f"{failure}{tried}")
                raise failure
            chosen = self.style
            assert chosen is not None
            _, magnitude = observed(lambda: evaluate(chosen))
            noise = np.maximum(spread(noisy_runs(lambda: evaluate(chosen), self.samples, self.seed), values), magnitude_floor(_dtype_name(self.dtype), magnitude))
            shape = ("(P, 1)" if chosen[0] else "(P,)") + ("" if chosen[1] else ", points without requires_grad")
            result[q.name] = EngineValue(values, dtype=_dtype_name(self.dtype), error_estimate=noise, note=f"your operator (fields passed as u(x) -> {shape})")
        return result


@leaves_state_unchanged
def check_operator(
    op_fn: Callable[..., Any],
    operator: str,
    variables: Sequence[str],
    *,
    constants: Mapping[str, float] | None = None,
    domain: Mapping[str, Sequence[float]] | None = None,
    fields: Sequence[str] = ("u",),
    points: int = 32,
    manufactured: int = 2,
    networks: int = 2,
    seed: int = 0,
    dtype: str = "float64",
    tolerance: Tolerance | None = None,
    rounding_samples: int = 2,
) -> CheckResult:
    """Check a PDE operator implemented with torch autograd against SymPy.

    **Arguments:**

    - `op_fn`: ``op_fn(u, x) -> (P,)`` where ``x`` is a ``(P, d)`` tensor with
      ``requires_grad=True`` (columns in the order of `variables`) and ``u`` is a callable
      field, ``u(x) -> (P,)`` (a dict of such callables when there are several `fields`).
    - `operator`: the operator in case-file syntax, e.g. ``"laplacian(u) + k**2*u"``.
    - `variables`, `constants`, `fields`: names used by `operator`; a variable named ``t``
      is time (no spatial operators act on it).
    - `domain`: ``{variable: [low, high]}`` (default ``[-1, 1]`` for each).
    - `points`, `manufactured`, `networks`, `seed`: how many random points, seeded smooth
      manufactured fields and seeded random tanh networks ``[d, 8, 8, len(fields)]`` to try;
      an operator that is right on one field only is caught on another.
    - `dtype`: the dtype your operator runs in (``float64`` or ``float32``).
    - `rounding_samples`: Monte-Carlo-arithmetic runs that measure your operator's rounding
      noise (float32 second derivatives carry far more than ``eps``).

    **Returns:** a :class:`CheckResult` with one quantity per field tried; the engines are
    ``symbolic`` (SymPy), ``torch`` and ``finite_diff`` (derivcheck's own) and ``user``.
    """
    import torch

    from derivcheck.loading import case_from_dict
    from derivcheck.engines import make_engines
    from derivcheck.runner import run_field_problem

    if not callable(op_fn):
        raise InvalidType(f"op_fn must be callable, got {type(op_fn).__name__}")
    if not isinstance(operator, str):
        raise InvalidType(f"operator must be a string in case-file syntax, got {type(operator).__name__}")
    if isinstance(variables, str) or not isinstance(variables, Sequence) or not variables:
        raise InvalidType(f"variables must be a non-empty list of names, got {variables!r}")
    for name, value in (("points", points), ("manufactured", manufactured), ("networks", networks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (name == "points" and value < 1):
            raise InvalidArgument(f"{name} must be a non-negative integer (points >= 1), got {value!r}")
    if manufactured + networks < 1:
        raise InvalidArgument("try at least one field: manufactured + networks must be >= 1")
    if dtype not in ("float64", "float32"):
        raise InvalidArgument(f"dtype must be float64 or float32, got {dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise InvalidArgument(f"seed must be a non-negative integer, got {seed!r}")
    if tolerance is not None and not isinstance(tolerance, Tolerance):
        raise InvalidType(f"tolerance must be a derivcheck.Tolerance, got {type(tolerance).__name__} {tolerance!r}")
    if isinstance(rounding_samples, bool) or not isinstance(rounding_samples, int) or not 0 <= rounding_samples <= 16:
        raise InvalidArgument(f"rounding_samples must be an integer in 0..16, got {rounding_samples!r}")
    tolerance = tolerance or OPERATOR_TOLERANCE
    domain = dict(domain or {v: [-1.0, 1.0] for v in variables})
    rng = np.random.default_rng(seed)
    base = {
        "variables": list(variables),
        "fields": list(fields),
        "constants": dict(constants or {}),
        "pde": operator,
        "sources": [],
        "domain": {k: list(map(float, v)) for k, v in domain.items()},
        "points": {"count": points},
        "seed": seed,
        "dtype": dtype,
    }
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    quantities = []
    tried: list[tuple[str, dict[str, str] | None, int]] = [("manufactured field", f, i) for i, f in enumerate(_manufactured_fields(list(variables), list(fields), manufactured, rng))]
    tried += [("tanh network", None, i) for i in range(networks)]
    for kind, formulas, index in tried:
        net_seed = index
        table = dict(base)
        if formulas is not None:
            table.update(solution=formulas if len(fields) > 1 else formulas[fields[0]], check=["exact"])
        else:
            table.update(check=["network"], network={"widths": [len(variables), 8, 8, len(fields)]}, seed=seed + 1 + net_seed)
        try:
            case = case_from_dict(table, file="check_operator")
        except InvalidArgument as exc:
            raise InvalidArgument(str(exc).replace("check_operator: key 'pde'", "operator")) from None
        (problem,) = case.problems  # a field case
        user = _UserOperator(op_fn, torch_dtype, rounding_samples, seed)
        engines = make_engines(["symbolic", "finite_diff", "torch"]) + [user]
        result = run_field_problem(problem, engines, ["residual"], tolerance=tolerance, zero_residual=False)  # type: ignore[arg-type]
        if result.errors:
            user_errors = [e for e in result.errors if e.startswith("engine user")]
            if user_errors:
                raise InvalidArgument(f"op_fn failed on {kind} {index + 1}: {user_errors[0]}")
            raise RuntimeError("; ".join(result.errors))
        (q,) = result.quantities
        q.name = f"{operator} on {kind} {index + 1}"
        if q.verdict == "disagree":
            q.message = explain(q, OPERATOR_WORDS)
        quantities.append(q)
    return CheckResult(
        what=f"operator {operator!r}",
        quantities=quantities,
        dtype=dtype,
        tolerances={f"rtol {dtype} vs float64": tolerance.rtol_for(dtype, "float64"), "fd_safety": tolerance.fd_safety},
        notes=[f"{points} points per field; fields tried: {manufactured} manufactured, {networks} tanh networks (seed {seed})"],
    )
