"""PDE case files: manufactured solutions and network fields.

::

    name = "helmholtz-mms"
    variables = ["x", "y"]               # independent variables; "t" is time if present
    time = "t"                           # optional: which variable is time (no spatial operators)
    fields = ["u"]                       # default ["u"]
    constants = { a1 = 1, a2 = 4, k = 1 }
    solution = "sin(a1*pi*x) * sin(a2*pi*y)"        # or { u = "...", v = "..." }
    pde = "laplacian(u) + k**2 * u - f"  # or { momentum_x = "...", continuity = "..." }
    sources = ["f"]                      # source symbols; default ["f"]
    forcing = "..."                      # optional: your forcing formula, checked against the derived one
    domain = { x = [-1, 1], y = [-1, 1] }
    points = { count = 32 }              # uniform in the domain (seeded), or { values = [[x, y], ...] }
    network = { widths = [2, 8, 8, 1], activation = "tanh" }   # the network field; false for none
    pinn = { boundary = 16, lambda = 1.0 }                      # enables the "pinn" quantities
    check = ["exact", "network"]         # which fields to check (default both)
    quantities = ["u_xx", "laplacian(u)", "residual", "hessian(u)", "pinn"]   # default: all of the PDE's
    engines = ["symbolic", "finite_diff", "numpy", "torch", "torch_func"]

Formulas go through the whitelisting parser with the operators of
:mod:`derivcheck.operators`. One case yields one field problem per entry of ``check``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.case_fields import CaseBase
from derivcheck.errors import CaseError, ExpressionError
from derivcheck.expr import check_real, make_symbol, name_problem, parse_expression
from derivcheck.fields import FieldProblem, PDESpec, field_quantities
from derivcheck.layers import LAYERS
from derivcheck import budget
from derivcheck.escaping import one_line
from derivcheck.operators import MAX_ORDER, OperatorRecord, derivative_name, derivative_nodes, operator_handlers
from derivcheck.problem import DTYPES, Network

PDE_KEYS = (
    "name", "description", "variables", "time", "fields", "constants", "solution", "pde", "sources",
    "forcing", "domain", "points", "network", "pinn", "check", "quantities", "engines", "dtype", "seed",
    "tolerance", "finite_diff",
)  # fmt: skip
ACTIVATIONS = ("tanh", "sigmoid")
MAX_POINTS = 100_000
MAX_CONSTANT = 1e12
"""Largest magnitude of a constant: beyond it derivatives overflow or lose every digit."""
MAX_COORDINATE = 1e6
"""Largest magnitude of a domain bound or point coordinate (finite-difference steps are
relative to ``max(1, |x|)``, and a PDE posed on such a domain is better rescaled)."""
FIELD_ENGINES = ("symbolic", "finite_diff", "numpy", "torch", "torch_func")


@dataclass(kw_only=True)
class FieldCase(CaseBase):
    """A validated PDE case: one :class:`FieldProblem` per checked field kind."""

    problems: list[FieldProblem]
    quantities: list[str] | None

    def summary(self) -> dict[str, Any]:
        first = self.problems[0]
        return {
            "name": self.name,
            "file": self.file,
            "description": self.description,
            "kind": "pde",
            "pde": dict(first.spec.texts),
            "fields": [p.kind for p in self.problems],
            "samples": first.n_points,
            "dtype": first.dtype,
            "quantities": [f"[{p.kind}] {q.name}" for p in self.problems for q in field_quantities(p, self.quantities)],
            "engines": list(self.engines),
        }


def _err(file: str | None, key: str, message: str, value: Any = None, allowed: str | None = None) -> CaseError:
    return CaseError(message, file=file, key=key, value=value, allowed=allowed)


def _names(table: Mapping[str, Any], key: str, default: list[str] | None, file: str | None) -> list[str]:
    value = table.get(key, default)
    if value is None:
        raise _err(file, key, "missing required key (a list of names)")
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.isidentifier() and not v.startswith("_") for v in value):
        raise _err(file, key, "must be a non-empty array of names", value, '["x", "y"]')
    if len(set(value)) != len(value):
        raise _err(file, key, "names must be distinct", value)
    for name in value:
        problem = name_problem(name)
        if problem:
            raise _err(file, key, problem, name)
    return list(value)


def _formulas(table: Mapping[str, Any], key: str, names: list[str] | None, file: str | None) -> dict[str, str]:
    """A formula string (for a single name) or a table of formulas."""
    value = table[key]
    if isinstance(value, str):
        if names is not None and len(names) != 1:
            raise _err(file, key, f"give one formula per name as a table ({', '.join(names)})", value)
        return {(names[0] if names else "main"): value}
    if not isinstance(value, dict) or not value or not all(isinstance(v, str) for v in value.values()):
        raise _err(file, key, "must be a formula string or a table of formula strings", value)
    if names is not None and set(value) != set(names):
        raise _err(file, key, "needs exactly one formula per field", sorted(value), ", ".join(names))
    return dict(value)


def load_pde_case(table: Mapping[str, Any], *, file: str | None, base_dir: Path | None, overrides: Mapping[str, Any]) -> FieldCase:
    """Validate a PDE case table (see the module docstring) and build its problems."""
    from derivcheck.case_fields import _finite_diff, _tolerance, shown_scalar, validate_engine_names

    for key, value in table.items():
        if key not in PDE_KEYS:
            raise _err(file, key, "unknown key", shown_scalar(value), ", ".join(PDE_KEYS))
    name = table.get("name", one_line(Path(file).stem) if file else "case")
    description = table.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise _err(file, "name", "name and description must be strings", name)
    variables = _names(table, "variables", None, file)
    budget.require("variables", len(variables), file=file, key="variables")
    fields = _names(table, "fields", ["u"], file)
    time = table.get("time", "t" if "t" in variables else None)
    if time is not None and time not in variables:
        raise _err(file, "time", "the time variable must be one of the variables", time, ", ".join(variables))
    spatial = [v for v in variables if v != time]
    constants_raw = table.get("constants", {})
    if not isinstance(constants_raw, dict):
        raise _err(file, "constants", "must be a table of numbers", constants_raw, "{ k = 1.0 }")
    constants: dict[str, float] = {}
    for cname, cvalue in constants_raw.items():
        problem = name_problem(cname)
        if problem:
            raise _err(file, f"constants.{cname}", problem, cname)
        if isinstance(cvalue, bool) or not isinstance(cvalue, (int, float)) or not np.isfinite(cvalue) or abs(cvalue) > MAX_CONSTANT:
            raise _err(file, f"constants.{cname}", "must be a finite number", cvalue, f"|value| <= {MAX_CONSTANT:g} (rescale the problem)")
        constants[cname] = float(cvalue)
    if table.get("sources") == []:
        sources: list[str] = []
    elif "sources" in table:
        sources = _names(table, "sources", ["f"], file)
    else:
        sources = ["f"] if "f" not in set(variables) | set(fields) | set(constants) else []
    taken: dict[str, str] = {}
    for group, members in (("variables", variables), ("fields", fields), ("constants", list(constants)), ("sources", sources)):
        for member in members:
            if member in taken:
                raise _err(file, group, f"name {member!r} is already used in {taken[member]}", member)
            taken[member] = group

    symbols = {v: make_symbol(v) for v in variables}
    field_funcs = {f: sp.Function(f, real=True)(*symbols.values()) for f in fields}
    record = OperatorRecord()
    handlers = operator_handlers(symbols, spatial, record)

    def parse(text: str, key: str, allow_fields: bool, allow_sources: bool) -> sp.Expr:
        try:
            expr = parse_expression(
                text,
                variables=variables,
                constants=list(constants) + (sources if allow_sources else []),
                what=f"key '{key}'",
                extra_names=field_funcs if allow_fields else None,
                operators=handlers if allow_fields else None,
            )
        except ExpressionError as exc:
            raise CaseError(str(exc), file=file) from None
        if constants:
            try:
                check_real(expr.subs({make_symbol(k): v for k, v in constants.items()}), f"key '{key}' with the constants' values", text)
            except ExpressionError as exc:
                raise CaseError(str(exc), file=file) from None
        for node in derivative_nodes(expr):
            if node.derivative_count > MAX_ORDER:  # operators nested inside operators
                raise _err(
                    file,
                    key,
                    f"a derivative of total order {node.derivative_count} ({derivative_name(node)}) is beyond the supported maximum {MAX_ORDER}",
                    text,
                    "nest operators only up to a total order of 4",
                )
        return expr

    if "pde" not in table:
        raise _err(file, "pde", 'missing required key (the PDE residual, e.g. "laplacian(u) + k**2*u - f")')
    pde_texts = _formulas(table, "pde", None, file)
    equations = {eq: parse(text, f"pde.{eq}" if eq != "main" else "pde", True, True) for eq, text in pde_texts.items()}
    if isinstance(table["pde"], str):
        equations = {"residual": equations.pop("main")}
        pde_texts = {"residual": pde_texts["main"]}
    source_symbols = {s: make_symbol(s) for s in sources}
    eq_sources: dict[str, sp.Symbol] = {}
    for eq, expr in equations.items():
        used = [s for s in source_symbols.values() if expr.has(s)]
        if len(used) > 1:
            raise _err(file, "pde", f"equation {eq!r} uses more than one source ({', '.join(map(str, used))}); give each equation its own", [str(u) for u in used])
        if used:
            eq_sources[eq] = used[0]
    solution = None
    if "solution" in table:
        texts = _formulas(table, "solution", fields, file)
        solution = {f: parse(texts[f], f"solution.{f}" if len(fields) > 1 else "solution", False, False) for f in fields}
    spec = PDESpec(variables, symbols, spatial, fields, field_funcs, equations, constants, eq_sources, record.used, solution, texts=pde_texts)
    if solution is not None:  # before anything derives a closed form (the forcing, the quantities)
        # only the partials the quantities need (grad and hessian of a field only when asked
        # for, or by default), counted against the limit before SymPy derives any of them
        requested = table.get("quantities")
        asked = set(requested) if isinstance(requested, list) and all(isinstance(q, str) for q in requested) else None
        nodes: set[Any] = {node for expr in equations.values() for node in derivative_nodes(expr)}
        for field_name in fields:
            if asked is None or f"grad({field_name})" in asked:
                nodes.update((field_name, i) for i in range(len(variables)))
            if asked is None or f"hessian({field_name})" in asked:
                nodes.update((field_name, i, j) for i in range(len(variables)) for j in range(i, len(variables)))
        budget.require("derivatives", len(nodes), file=file, key="quantities", detail=f"{len(fields)} field(s), {len(variables)} variable(s)")
        _check_closed_forms(spec, nodes, file)
    for eq in eq_sources:
        try:
            spec.source_coefficient(eq)
        except ValueError as exc:
            raise _err(file, "pde", str(exc)) from None
    if "forcing" in table:
        if not eq_sources:
            raise _err(file, "forcing", "the PDE has no source to give a forcing for", allowed=f"use a source name ({', '.join(sources) or 'f'}) in the PDE")
        if isinstance(table["forcing"], str):
            if len(eq_sources) != 1:
                raise _err(file, "forcing", 'several equations have sources: give a table { equation = "formula" }', table["forcing"])
            texts = {next(iter(eq_sources)): table["forcing"]}
        else:
            texts = _formulas(table, "forcing", sorted(eq_sources), file)
        spec.user_forcing = {eq: parse(text, f"forcing.{eq}", False, False) for eq, text in texts.items()}

    dtype = overrides.get("dtype") or table.get("dtype", "float64")
    if dtype not in DTYPES:
        raise _err(file, "dtype", "unknown dtype", dtype, ", ".join(DTYPES))
    seed = overrides["seed"] if overrides.get("seed") is not None else table.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _err(file, "seed", "must be a non-negative integer", seed)
    domain = _domain(table.get("domain"), variables, file)
    points = _points(table.get("points", {}), domain, variables, seed, file)

    check = table.get("check", ["exact", "network"] if solution is not None else ["network"])
    if not isinstance(check, list) or not check or not set(check) <= {"exact", "network"}:
        raise _err(file, "check", "must be a non-empty array", check, '"exact", "network"')
    if "exact" in check and solution is None:
        raise _err(file, "check", "checking the exact field needs a 'solution'", check)
    network_spec = table.get("network", {})
    problems: list[FieldProblem] = []
    pinn = table.get("pinn")
    boundary, lam = None, 1.0
    if pinn is not None:
        if not isinstance(pinn, dict) or set(pinn) - {"boundary", "lambda"}:
            raise _err(file, "pinn", "must be a table with keys boundary, lambda", pinn, "{ boundary = 16, lambda = 1.0 }")
        count = pinn.get("boundary", 16)
        lam = pinn.get("lambda", 1.0)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_POINTS:
            raise _err(file, "pinn.boundary", "must be an integer number of boundary points", count, f"1..{MAX_POINTS}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (0 < lam <= 1e6):
            raise _err(file, "pinn.lambda", "must be a positive number", lam, "0 < lambda <= 1e6")
        if solution is None:
            raise _err(file, "pinn", "the PINN boundary loss needs a 'solution' for its boundary data")
        boundary = _boundary_points(domain, variables, count, seed)
    if solution is not None:
        _check_solution_values(spec, points, file, "points")
        if boundary is not None:
            _check_solution_values(spec, boundary, file, "pinn.boundary")
    for kind in check:
        if kind == "exact":
            problems.append(FieldProblem(spec, "exact", points, dtype=dtype, meta={"domain": domain}))
        else:
            if network_spec is False:
                raise _err(file, "network", "is false but check includes 'network'")
            network, params = _network(network_spec, len(variables), len(fields), seed, file)
            problems.append(FieldProblem(spec, "network", points, network, params, boundary=boundary, dtype=dtype, lambda_b=float(lam), meta={"domain": domain, "network": network.describe()}))
    quantities = table.get("quantities")
    if quantities is not None:
        if not isinstance(quantities, list) or not quantities or not all(isinstance(q, str) for q in quantities):
            raise _err(file, "quantities", "must be a non-empty array of strings", quantities)
        for q in quantities:
            errors = []
            for candidate in problems:
                try:
                    field_quantities(candidate, [q], strict=True)
                    break
                except ValueError as exc:
                    errors.append(f"[{candidate.kind} field] {exc}")
            else:
                raise _err(file, "quantities", "; ".join(errors))
    engines = overrides.get("engines") or table.get("engines", list(FIELD_ENGINES))
    validate_engine_names(engines, file=file, key="engines")
    _check_budget(problems, quantities, engines, file)
    return FieldCase(
        name=name,
        problems=problems,
        quantities=quantities,
        engines=list(engines),
        description=description,
        file=file,
        seed=seed,
        tolerance=_tolerance(table.get("tolerance"), file),
        finite_diff=_finite_diff(table.get("finite_diff"), file),
    )


def _check_solution_values(spec: PDESpec, points: np.ndarray, file: str | None, where: str) -> None:
    """Refuse a solution that is not a finite real number at a point (``sqrt(x)`` at
    x < 0, ``log(x)`` at 0): evaluated as floats it would be NaN or silently wrong."""
    from derivcheck.expr import NUMPY_MODULES

    assert spec.solution is not None
    values = spec.constant_values()
    for name, expr in spec.solution.items():
        function = sp.lambdify([list(spec.variable_symbols)], expr.subs(values), modules=NUMPY_MODULES)
        with np.errstate(all="ignore"):
            try:
                column = np.broadcast_to(np.asarray(function(list(points.T)), dtype=float), (points.shape[0],))
            except (TypeError, ValueError, OverflowError, ZeroDivisionError):
                raise _err(file, "solution", f"solution {name} could not be evaluated as a real number at the {where}") from None
        bad = ~np.isfinite(column)
        if bad.any():
            at = points[int(np.argmax(bad))]
            shown = ", ".join(f"{v} = {c:.6g}" for v, c in zip(spec.variables, at))
            raise _err(
                file,
                "solution",
                f"solution {name} is not a finite real number at the point {shown} (of {where}): outside the formula's real domain, e.g. sqrt or log of a negative number",
                str(spec.solution[name]),
                "a formula that is real and finite on the whole domain",
            )


def _check_closed_forms(spec: PDESpec, nodes: set[Any], file: str | None) -> None:
    """Derive the solution's partials one order at a time, refusing as soon as one grows
    beyond the ``expression-size`` limit (a nested composition's n-th derivative grows like
    depth^n: ``tanh(...tanh(x*x)...*x)`` 28 deep has a 4th derivative SymPy works on for
    many minutes), all under a wall-clock budget."""
    limit = budget.value("expression-size") or None
    solution = spec.solution_map()
    symbols = list(spec.variable_symbols)
    chains: list[tuple[Any, tuple[Any, ...], str]] = []
    for node in nodes:
        if isinstance(node, sp.Derivative):
            chain = tuple(v for v, n in node.variable_count for _ in range(int(n)))
            chains.append((node.expr, chain, derivative_name(node)))
        else:
            name, *indices = node
            chains.append((spec.field_funcs[name], tuple(symbols[i] for i in indices), f"d{name}/d" + "d".join(str(symbols[i]) for i in indices)))
    done: dict[tuple[Any, tuple[Any, ...]], Any] = {}
    try:
        with budget.time_limit(budget.DERIVE_SECONDS):
            for base, chain, label in sorted(chains, key=lambda c: len(c[1])):
                expr = done.get((base, ()))
                if expr is None:
                    expr = done[(base, ())] = base.subs(solution).doit()
                for depth in range(1, len(chain) + 1):
                    key = (base, chain[:depth])
                    if key not in done:
                        done[key] = sp.diff(done[(base, chain[: depth - 1])], chain[depth - 1])
                        if done[key].has(sp.Derivative):
                            raise _err(
                                file,
                                "solution",
                                f"SymPy cannot write {label} of the solution in closed form (it stays an unevaluated derivative, as for abs() of some compositions); rewrite the formula, e.g. without abs/min/max around it",
                            )
                        if limit:
                            size = budget.tree_size(done[key], limit)
                            budget.require(
                                "expression-size",
                                size,
                                file=file,
                                key="solution",
                                detail=f"{label} after {depth} derivative(s); the formula's partials grow too fast: simplify it or ask for lower orders",
                            )
    except budget.TimeBudgetExceeded:
        raise _err(file, "solution", f"deriving the solution's partial derivatives took longer than {budget.DERIVE_SECONDS:g} s; simplify the formula or ask for lower orders") from None
    except RecursionError:
        raise _err(file, "solution", "the solution is nested too deeply to differentiate") from None


def _check_budget(problems: list[FieldProblem], quantities: list[str] | None, engines: list[str], file: str | None) -> None:
    """Refuse a PDE case whose derivatives would cost beyond a limit of
    :mod:`derivcheck.budget`: how many distinct partials it needs, and the finite-difference
    engine's network evaluations (stencil points grow as 6^order)."""
    for problem in problems:
        nodes: set[Any] = set()
        highest = 0
        d = len(problem.spec.variables)
        for q in field_quantities(problem, quantities):
            if q.kind == "grad":
                nodes.update((q.field_name, i) for i in range(d))
            elif q.kind == "hessian":
                nodes.update((q.field_name, i, j) for i in range(d) for j in range(i, d))
                highest = max(highest, 2)
            elif q.expr is not None:
                for node in derivative_nodes(q.expr):
                    nodes.add(node)
                    highest = max(highest, int(node.derivative_count))
        budget.require("derivatives", len(nodes), file=file, key="quantities", detail=f"{problem.kind} field, {d} variable(s)")
        if problem.network is not None:
            budget.check_network(problem.network, problem.n_points, file=file, finite_differences=False, param_grads=False, input_grads=0)
            if "finite_diff" in engines:
                per_pass = problem.n_points * sum(layer.work_per_sample() for layer in problem.network.layers)
                passes = len(nodes) * 6.0 ** max(highest, 1)
                budget.require("work", passes * per_pass, file=file, key="network", detail=f"{len(nodes)} partial derivative(s) up to order {highest}, {problem.n_points} points")


def _domain(spec: Any, variables: list[str], file: str | None) -> dict[str, tuple[float, float]]:
    if not isinstance(spec, dict):
        raise _err(file, "domain", "must be a table of [low, high] per variable", spec, "{ x = [-1, 1], y = [0, 2] }")
    out = {}
    for v in variables:
        bounds: Any = spec.get(v)
        ok = isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) and np.isfinite(b) and abs(b) <= MAX_COORDINATE for b in bounds)
        if not ok or bounds[0] >= bounds[1] or (bounds[1] - bounds[0]) < 1e-6 * max(1.0, abs(bounds[0]), abs(bounds[1])):
            raise _err(file, f"domain.{v}", "must be [low, high] with low < high", bounds, f"finite numbers within +-{MAX_COORDINATE:g}, high - low at least 1e-6 of their size")
        out[v] = (float(bounds[0]), float(bounds[1]))
    extra = set(spec) - set(variables)
    if extra:
        raise _err(file, "domain", f"{sorted(extra)[0]!r} is not a declared variable", sorted(extra), ", ".join(variables))
    return out


def _points(spec: Any, domain: dict[str, tuple[float, float]], variables: list[str], seed: int, file: str | None) -> np.ndarray:
    if not isinstance(spec, dict) or set(spec) - {"count", "values"}:
        raise _err(file, "points", "must be a table with 'count' or 'values'", spec, "{ count = 32 }")
    if "values" in spec:
        values = spec["values"]
        try:
            array = np.asarray(values, dtype=float)
        except (TypeError, ValueError):
            raise _err(file, "points.values", "must be an array of points (arrays of numbers)", values) from None
        if array.ndim != 2 or array.shape[1] != len(variables) or array.shape[0] < 1:
            raise _err(file, "points.values", f"each point needs {len(variables)} coordinates ({', '.join(variables)})", values)
        if array.shape[0] > MAX_POINTS:
            raise _err(file, "points.values", f"{array.shape[0]} points", allowed=f"at most {MAX_POINTS}")
        bad = ~(np.isfinite(array) & (np.abs(array) <= MAX_COORDINATE))
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise _err(file, f"points.values[{row}]", "coordinates must be finite numbers", array[row].tolist(), f"finite numbers within +-{MAX_COORDINATE:g}")
        return array
    count = spec.get("count", 32)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_POINTS:
        raise _err(file, "points.count", "out of range", count, f"1..{MAX_POINTS}")
    rng = np.random.default_rng([seed, 2])
    low = np.array([domain[v][0] for v in variables])
    high = np.array([domain[v][1] for v in variables])
    return low + (high - low) * rng.random((count, len(variables)))


def _boundary_points(domain: dict[str, tuple[float, float]], variables: list[str], count: int, seed: int) -> np.ndarray:
    """Uniform points on the faces of the domain box (seeded)."""
    rng = np.random.default_rng([seed, 3])
    low = np.array([domain[v][0] for v in variables])
    high = np.array([domain[v][1] for v in variables])
    pts = low + (high - low) * rng.random((count, len(variables)))
    faces = rng.integers(0, 2 * len(variables), size=count)
    for i, face in enumerate(faces):
        axis, side = divmod(int(face), 2)
        pts[i, axis] = high[axis] if side else low[axis]
    return pts


def _network(spec: Any, n_in: int, n_out: int, seed: int, file: str | None) -> tuple[Network, dict[str, np.ndarray]]:
    if not isinstance(spec, dict) or set(spec) - {"widths", "activation"}:
        raise _err(file, "network", "must be a table with keys widths, activation", spec, '{ widths = [2, 8, 8, 1], activation = "tanh" }')
    widths = spec.get("widths", [n_in, 8, 8, n_out])
    if not isinstance(widths, list) or len(widths) < 2 or not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 1024 for w in widths):
        raise _err(file, "network.widths", "must be an array of at least two integers in 1..1024", widths)
    if widths[0] != n_in or widths[-1] != n_out:
        raise _err(file, "network.widths", f"must start with {n_in} (one input per variable) and end with {n_out} (one output per field)", widths)
    activation = spec.get("activation", "tanh")
    if activation not in ACTIVATIONS:
        raise _err(file, "network.activation", "unsupported activation (a field needs smooth second derivatives)", activation, ", ".join(ACTIVATIONS))
    budget.require("layers", 2 * len(widths) - 3, file=file, key="network.widths")
    layers = []
    for i in range(len(widths) - 1):
        layers.append(LAYERS["linear"](**{"in": widths[i], "out": widths[i + 1], "bias": True}))
        if i < len(widths) - 2:
            layers.append(LAYERS[activation]())
    network = Network.build(layers)
    budget.check_network(network, 1, file=file, finite_differences=False, param_grads=False, input_grads=0)
    return network, network.init_params(seed)


__all__ = ["FIELD_ENGINES", "FieldCase", "load_pde_case"]
