"""Field problems: PDE operators and residuals evaluated on a field at points.

A *field* is a function of the independent variables (``u(x, y)``, or ``u, v, p`` of
``(x, y, t)``). It is either

- **exact**: closed-form expressions (a manufactured solution), or
- **network**: a small MLP ``u_theta`` whose outputs are the fields, with seeded
  parameters (built from the layer catalog, so every engine has its own implementation).

A :class:`PDESpec` holds the equations as SymPy expressions in which fields are undefined
functions (``u(x, y)``) and derivatives are unevaluated ``Derivative`` nodes. An equation
may contain one *source* symbol (``f``); the method of manufactured solutions (MMS) derives
it from the exact solution: the equation is affine in the source, ``A + c*f = 0`` with
constant ``c != 0``, so ``f = -A(u_exact) / c``.

Quantities of a field problem (values at every point, shape ``(P,)`` unless noted):

- each derivative that appears, named ``u_xx``, ``u_t``, ``u_xy`` (or ``d(expr; x, y)``);
- each operator application as written: ``laplacian(u)``, ``div(u,v)``, ``advect(u,u,v)``;
- ``forcing[eq]`` (exact fields, equations with a source): the derived forcing;
- ``residual[eq]``: the equation with the source set to the forcing -- ~0 on the exact
  solution, a definite nonzero field on a network;
- on request ``grad(u)`` ``(P, d)`` and ``hessian(u)`` ``(P, d, d)`` over all variables;
- on request ``pinn`` (network fields with a solution and boundary points): the gradients
  of the PINN loss terms w.r.t. every parameter, ``dLr/d<param>`` and ``dLb/d<param>``,
  and the learning-rate-annealing statistic ``lambda_hat``::

      L_r = mean over interior points of (sum over equations of residual^2)
      L_b = mean over boundary points of (sum over fields of (u_theta - u_exact)^2)
      lambda_hat = max |dL_r/dW| / mean |lambda * dL_b/dW|   (weights only, all layers)

  as in Wang, Teng & Perdikaris, "Understanding and mitigating gradient pathologies in
  physics-informed neural networks" (Algorithm 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.operators import derivative_name, derivative_nodes
from derivcheck.problem import DTYPES, Network
from derivcheck.errors import InvalidArgument
from derivcheck.expr import NUMPY_MODULES


def drop_dirac(expr: sp.Expr) -> sp.Expr:
    """Replace ``DiracDelta`` terms (second derivatives of ``abs``/``max``) by 0: they vanish
    away from the kink, and points at the kink are reported as kinks."""
    return expr.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.Integer(0))


@dataclass
class PDESpec:
    """A parsed PDE system (see the module docstring)."""

    variables: list[str]
    symbols: dict[str, sp.Symbol]
    spatial: list[str]
    fields: list[str]
    field_funcs: dict[str, sp.Expr]
    equations: dict[str, sp.Expr]
    constants: dict[str, float] = field(default_factory=dict)
    sources: dict[str, sp.Symbol] = field(default_factory=dict)  # equation -> source symbol
    operators: list[tuple[str, sp.Expr]] = field(default_factory=list)
    solution: dict[str, sp.Expr] | None = None
    user_forcing: dict[str, sp.Expr] = field(default_factory=dict)  # equation -> formula
    texts: dict[str, str] = field(default_factory=dict)  # equation -> text as written
    _derived: dict[str, sp.Expr] | None = field(default=None, repr=False, compare=False)
    _substituted: dict[sp.Expr, sp.Expr] = field(default_factory=dict, repr=False, compare=False)

    @property
    def variable_symbols(self) -> list[sp.Symbol]:
        return [self.symbols[v] for v in self.variables]

    def constant_values(self) -> dict[sp.Symbol, float]:
        return {sp.Symbol(name, real=True): value for name, value in self.constants.items()}

    def with_constants(self, expr: sp.Expr) -> sp.Expr:
        """`expr` with the constants' values substituted (memoized per spec: SymPy's
        ``subs`` costs more than a small network's forward pass)."""
        if expr not in self._substituted:
            self._substituted[expr] = expr.subs(self.constant_values())
        return self._substituted[expr]

    def source_coefficient(self, equation: str) -> tuple[sp.Expr, sp.Expr]:
        """``(A, c)`` with ``equation = A + c * source``; raises ``ValueError`` unless the
        equation is affine in its source with a constant nonzero coefficient."""
        expr = self.equations[equation]
        source = self.sources[equation]
        coefficient = sp.diff(expr, source)
        if coefficient.has(source) or coefficient == 0:
            raise ValueError(f"equation {equation!r} must be affine in its source {source} (like '... - {source}')")
        if coefficient.free_symbols - set(self.constant_values()) or coefficient.atoms(sp.core.function.AppliedUndef):
            raise ValueError(f"the coefficient of {source} in equation {equation!r} must be a constant, got {coefficient}")
        return sp.expand(expr - coefficient * source), coefficient

    def derived_forcing(self) -> dict[str, sp.Expr]:
        """MMS forcing per equation with a source, as closed forms in the variables
        (derived and simplified once, then cached)."""
        if self.solution is None:
            return {}
        if self._derived is not None:
            return self._derived
        out = {}
        for equation in self.sources:
            rest, coefficient = self.source_coefficient(equation)
            # no sympy.simplify: its time has no bound (minutes on x**10000 + sin(x)*sin(y)),
            # and the closed form is evaluated, not read; explain tidies it for display
            out[equation] = drop_dirac((-rest / coefficient).subs(self.solution_map()).doit())
        self._derived = out
        return out

    def solution_map(self) -> dict[sp.Expr, sp.Expr]:
        """``{u(x, y): exact expression}``."""
        assert self.solution is not None
        return {self.field_funcs[name]: self.solution[name] for name in self.fields}

    def forcing_for_residual(self) -> dict[str, sp.Expr]:
        """The source values the residual uses: the case file's formula when given,
        else the derived one."""
        derived = self.derived_forcing()
        return {eq: self.user_forcing.get(eq, derived.get(eq, sp.Integer(0))) for eq in self.sources}

    def residual_expr(self, equation: str) -> sp.Expr:
        """The equation with its source replaced by :meth:`forcing_for_residual`."""
        expr = self.equations[equation]
        if equation in self.sources:
            expr = expr.subs(self.sources[equation], self.forcing_for_residual()[equation])
        return expr


@dataclass(frozen=True)
class FieldQuantity:
    """One quantity of a field problem; `expr` is what to evaluate (may hold Derivative
    nodes of fields), `kind` one of ``derivative``, ``operator``, ``forcing``,
    ``residual``, ``grad``, ``hessian``, ``pinn_grad``, ``lambda_hat``."""

    name: str
    kind: str
    shape: tuple[int, ...]
    expr: Any = None
    equation: str | None = None
    field_name: str | None = None
    order: int = 0
    param: str | None = None
    term: str | None = None  # "r" or "b" for PINN loss terms
    group: str = ""
    per_sample: bool = True
    points: Any = None  # (P, d) array for labels

    def index_label(self, index: tuple[int, ...]) -> str:
        if self.kind == "pinn_directions":
            return f"direction v_{index[0]}"
        if self.kind == "pinn_grad":
            return f"{self.param}[{', '.join(map(str, index))}]"
        if self.kind == "lambda_hat" or not index:
            return self.name
        p = index[0]
        where = ""
        if self.points is not None:
            where = " (" + ", ".join(f"{v:.4g}" for v in self.points[p]) + ")"
        extra = f", component {list(index[1:])}" if len(index) > 1 else ""
        return f"point {p}{where}{extra}"


@dataclass
class FieldProblem:
    """A PDE spec, a field (exact or network) and the points to evaluate at.

    `points` is ``(P, d)`` in the order of ``spec.variables``. For network fields,
    `network` maps ``d`` inputs to one output per field and `params` are its parameters.
    `boundary` (``(B, d)``) is used by the PINN-loss quantities.
    """

    spec: PDESpec
    kind: str
    points: np.ndarray
    network: Network | None = None
    params: dict[str, np.ndarray] | None = None
    boundary: np.ndarray | None = None
    dtype: str = "float64"
    lambda_b: float = 1.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "network"):
            raise InvalidArgument(f"field kind must be 'exact' or 'network', got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise InvalidArgument(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        self.points = np.asarray(self.points, dtype=np.float64)
        if self.points.ndim != 2 or self.points.shape[1] != len(self.spec.variables) or self.points.shape[0] < 1:
            raise InvalidArgument(f"points must have shape (P >= 1, {len(self.spec.variables)}), got {self.points.shape}")
        if self.kind == "exact" and self.spec.solution is None:
            raise InvalidArgument("an exact field problem needs a solution")
        if self.kind == "network":
            if self.network is None or self.params is None:
                raise InvalidArgument("a network field problem needs a network and its parameters")
            if self.network.in_size != len(self.spec.variables) or self.network.out_size != len(self.spec.fields):
                raise InvalidArgument(f"the field network must map {len(self.spec.variables)} inputs to {len(self.spec.fields)} output(s), got {self.network.in_size} -> {self.network.out_size}")

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    def solution_exprs(self) -> dict[str, sp.Expr]:
        """Exact fields with constants substituted (closed forms in the variables)."""
        assert self.spec.solution is not None
        values = self.spec.constant_values()
        return {name: expr.subs(values) for name, expr in self.spec.solution.items()}


def field_quantities(problem: FieldProblem, requested: Sequence[str] | None = None, *, strict: bool = False) -> list[FieldQuantity]:
    """All quantities of `problem` in a stable order (see the module docstring), or the
    `requested` subset. A requested name that does not apply to this kind of field
    (``forcing`` on a network, ``pinn`` on an exact solution) is left out, unless `strict`,
    which raises ``ValueError`` naming what is allowed."""
    spec = problem.spec
    P, d = problem.points.shape
    available: dict[str, FieldQuantity] = {}

    def add(q: FieldQuantity) -> None:
        available.setdefault(q.name, q)

    single = len(spec.equations) == 1
    for equation, expr in spec.equations.items():
        for node in derivative_nodes(expr):
            order = sum(int(n) for _, n in node.variable_count)
            add(FieldQuantity(derivative_name(node), "derivative", (P,), expr=node, order=order, points=problem.points))
    for text, expr in spec.operators:
        if not isinstance(expr, sp.Derivative):
            order = max((sum(int(n) for _, n in node.variable_count) for node in derivative_nodes(expr)), default=0)
            add(FieldQuantity(text, "operator", (P,), expr=expr, order=order, points=problem.points))
    for equation in spec.equations:
        suffix = "" if single else f"[{equation}]"
        order = max((sum(int(n) for _, n in node.variable_count) for node in derivative_nodes(spec.equations[equation])), default=0)
        if problem.kind == "exact" and equation in spec.sources:
            add(FieldQuantity(f"forcing{suffix}", "forcing", (P,), equation=equation, order=order, points=problem.points))
        add(FieldQuantity(f"residual{suffix}", "residual", (P,), expr=spec.residual_expr(equation), equation=equation, order=order, points=problem.points))
    extra: dict[str, FieldQuantity] = {}
    for name in spec.fields:
        extra[f"grad({name})"] = FieldQuantity(f"grad({name})", "grad", (P, d), field_name=name, order=1, points=problem.points)
        extra[f"hessian({name})"] = FieldQuantity(f"hessian({name})", "hessian", (P, d, d), field_name=name, order=2, points=problem.points)
    if problem.kind == "network" and problem.boundary is not None and spec.solution is not None:
        assert problem.network is not None
        for term in ("r", "b"):
            for ref in problem.network.params():
                extra[f"dL{term}/d{ref.qualified}"] = FieldQuantity(f"dL{term}/d{ref.qualified}", "pinn_grad", ref.shape, param=ref.qualified, term=term, group=f"dL{term}", per_sample=False)
        extra["lambda_hat"] = FieldQuantity("lambda_hat", "lambda_hat", (), per_sample=False)
        from derivcheck.quantities import FD_FULL_PARAMETERS, PARAM_DIRECTIONS

        if sum(int(np.prod(ref.shape)) for ref in problem.network.params()) > FD_FULL_PARAMETERS:
            for term in ("r", "b"):  # finite differences check these instead of every parameter
                extra[f"dL{term}/dparams·v"] = FieldQuantity(f"dL{term}/dparams·v", "pinn_directions", (PARAM_DIRECTIONS,), term=term, per_sample=False)
    if requested is None:
        return list(available.values())
    chosen: list[FieldQuantity] = []
    for name in requested:
        if name == "pinn":
            if strict and "lambda_hat" not in extra:
                raise ValueError("'pinn' needs a network field, a solution and pinn = { boundary = ... }")
            chosen.extend(q for q in extra.values() if q.kind in ("pinn_grad", "lambda_hat", "pinn_directions"))
            continue
        q = available.get(name) or extra.get(name)
        if q is None and not strict:
            continue
        if q is None:
            allowed = list(available) + list(extra) + (["pinn"] if "lambda_hat" in extra else [])
            raise ValueError(f"unknown quantity {name!r}; allowed: {', '.join(allowed)}")
        chosen.append(q)
    unique: dict[str, FieldQuantity] = {}
    for q in chosen:
        unique.setdefault(q.name, q)
    return list(unique.values())


def kink_arguments(expr: sp.Expr) -> list[sp.Expr]:
    """Expressions whose zeros are non-smooth points of `expr`: arguments of ``Abs``,
    ``sign``, ``Heaviside`` and pairwise differences of ``Max``/``Min`` arguments."""
    found: list[sp.Expr] = []
    for node in sp.preorder_traversal(expr):
        if isinstance(node, (sp.Abs, sp.sign, sp.Heaviside)):
            found.append(node.args[0])
        elif isinstance(node, (sp.Max, sp.Min)):
            args = list(node.args)
            for i in range(len(args)):
                for j in range(i + 1, len(args)):
                    found.append(args[i] - args[j])
    return found


def exact_kinks(problem: FieldProblem) -> np.ndarray:
    """Boolean ``(P,)``: points where some kink argument of the exact solution is exactly 0."""
    mask = np.zeros(problem.n_points, dtype=bool)
    if problem.kind != "exact":
        return mask
    symbols = problem.spec.variable_symbols
    for expr in problem.solution_exprs().values():
        for arg in kink_arguments(expr):
            fn = sp.lambdify([symbols], arg, modules=NUMPY_MODULES)
            with np.errstate(all="ignore"):
                values = np.broadcast_to(np.asarray(fn(list(problem.points.T)), dtype=float), (problem.n_points,))
            mask |= values == 0
    return mask


def expand_derivatives(expr: sp.Expr) -> sp.Expr:
    """Apply the product and chain rules so that every ``Derivative`` node is a derivative
    of a field itself (``d(u*v, x)`` becomes ``u*v_x + u_x*v``). Engines that know only
    field derivatives (jets, stencils of field values) evaluate this form."""
    return expr.doit()


def field_derivative_key(node: sp.Derivative, variables: Sequence[sp.Symbol]) -> tuple[str, tuple[int, ...]]:
    """``("u", (0, 0))`` for ``u_xx`` with variables ``(x, y)``: field name and the sorted
    variable indices. Raises ``ValueError`` for a derivative of anything but a field."""
    if not isinstance(node.expr, sp.core.function.AppliedUndef):
        raise ValueError(f"expected a derivative of a field, got {node}")
    index = {v: i for i, v in enumerate(variables)}
    order: list[int] = []
    for v, n in node.variable_count:
        order.extend([index[v]] * int(n))
    return node.expr.func.__name__, tuple(sorted(order))


def lambda_hat(grads_r: Mapping[str, np.ndarray], grads_b: Mapping[str, np.ndarray], weights: Sequence[str], lam: float) -> float:
    """The learning-rate-annealing statistic ``max |dL_r/dW| / mean |lam * dL_b/dW|`` over
    the weight tensors named in `weights` (Wang, Teng & Perdikaris, Algorithm 1)."""
    top = max(float(np.abs(grads_r[w]).max()) for w in weights)
    mean = float(np.mean(np.concatenate([np.abs(lam * grads_b[w]).ravel() for w in weights])))
    return top / mean


def pinn_values(quantities: Sequence[FieldQuantity], grads: Mapping[str, Mapping[str, np.ndarray]], problem: FieldProblem, note: str) -> dict[str, Any]:
    """Engine values of the ``pinn`` quantities from exact gradients ``grads[term][param]``
    (``term`` ``"r"`` or ``"b"``): each gradient, and ``lambda_hat`` over the weights."""
    from derivcheck.values import EngineValue

    out: dict[str, Any] = {}
    for q in quantities:
        if q.kind == "pinn_grad":
            out[q.name] = EngineValue(np.asarray(grads[q.term][q.param]), dtype=problem.dtype, note=note)  # type: ignore[index]
        elif q.kind == "lambda_hat":
            weights = [n for n in grads["r"] if n.endswith("weight")]
            out[q.name] = EngineValue(np.asarray(lambda_hat(grads["r"], grads["b"], weights, problem.lambda_b)), dtype=problem.dtype, note=note)
    return out
