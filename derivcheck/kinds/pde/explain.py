"""``derivcheck explain`` for a PDE case: the operators expanded, the manufactured forcing derived term by term, the
autograd graph that computes each derivative (``create_graph=True`` at every level), and
the values at the first point checked (SymPy vs torch).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from derivcheck._lazy import sympy as sp
from derivcheck.explain_steps import Check, Explanation, ExplainTooLarge, Step, _compare


def explain_pde(case: Any) -> Explanation:
    """The derivation of a PDE case (operators, manufactured forcing, autograd graph)."""
    return _explain_pde(case)


def _pretty(expr: sp.Expr) -> str:
    from derivcheck.operators import derivative_name, derivative_nodes

    out = expr
    for node in derivative_nodes(expr):
        out = out.xreplace({node: sp.Symbol(derivative_name(node))})
    for func in expr.atoms(sp.core.function.AppliedUndef):
        out = out.xreplace({func: sp.Symbol(func.func.__name__)})
    return str(out)


def _explain_pde(case: Any) -> Explanation:
    from derivcheck.budget import tidy
    from derivcheck.engines.torch_autograd.fields import _TorchFields
    from derivcheck.fields import drop_dirac
    from derivcheck.operators import derivative_name, derivative_nodes

    problem = next((p for p in case.problems if p.kind == "exact"), None)
    if problem is None:
        raise ExplainTooLarge(f"case {case.name!r} has no manufactured solution to derive from")
    spec = problem.spec
    point = problem.points[:1]
    symbols = spec.variable_symbols
    at = dict(zip(symbols, point[0]))
    steps: list[Step] = []
    intro = f"PDE case with variables {', '.join(spec.variables)} (time: {', '.join(v for v in spec.variables if v not in spec.spatial) or 'none'}), fields {', '.join(spec.fields)}; values checked at the first point {np.round(point[0], 4).tolist()}."
    expand = Step("Operators expanded")
    for text, expr in spec.operators:
        if not isinstance(expr, sp.Derivative):
            expand.text.append(f"{text} = {_pretty(expr)}")
            expand.latex.append(f"\\operatorname{{{text.split('(')[0]}}} = {sp.latex(expr)}")
    for eq, expr in spec.equations.items():
        expand.text.append(f"{eq}: {_pretty(expr)} = 0")
    steps.append(expand)

    solution = spec.solution_map()
    constants = spec.constant_values()
    torch_state = _TorchFields(type(problem)(spec, "exact", point), "cpu")
    forcing = spec.derived_forcing()
    for eq, expr in spec.equations.items():
        derive = Step(f"Manufactured forcing of {eq}")
        terms = max((abs(float(node.subs(solution).doit().subs(constants).subs(at))) for node in derivative_nodes(expr)), default=1.0)
        for name, sol in (spec.solution or {}).items():
            derive.text.append(f"{name} = {sol}")
            derive.latex.append(f"{name} = {sp.latex(sol)}")
        for node in derivative_nodes(expr):
            closed = drop_dirac(node.subs(solution).doit())
            shown = tidy(closed)
            derive.text.append(f"{derivative_name(node)} = {shown}")
            derive.latex.append(f"{derivative_name(node).replace('_', '_{', 1)}}} = {sp.latex(shown)}")
            value = float(closed.subs(constants).subs(at))
            derive.checks.append(_compare(f"{derivative_name(node)} at the point", {"SymPy": np.array([value]), "torch autograd": torch_state.value(node).detach().numpy()}))
        if eq in spec.sources:
            source = spec.sources[eq]
            shown = tidy(forcing[eq])
            derive.text.append(f"{source} = {shown}   (solve {eq} = 0 for {source})")
            derive.latex.append(f"{sp.latex(source)} = {sp.latex(shown)}")
            rest, coefficient = spec.source_coefficient(eq)
            value = float(forcing[eq].subs(constants).subs(at))
            derive.checks.append(_compare(f"{source} at the point", {"SymPy": np.array([value]), "torch autograd": torch_state.value(-rest / coefficient).detach().numpy()}, scale=terms))
        residual = float(torch_state.value(spec.residual_expr(eq)).detach().numpy()[0])
        derive.checks.append(Check(f"residual of {eq} at the point", abs(residual) <= 1e-10 * max(1.0, terms), f"torch residual = {residual:.2e} against terms of size {terms:.2e} (should vanish)"))
        steps.append(derive)

    graph = Step("Autograd graph (torch, create_graph=True at every level)")
    graph.text.append(", ".join(spec.variables) + " = leaf tensors of shape (P,) with requires_grad=True")
    graph.text.append(", ".join(spec.fields) + " = the field(s) evaluated on them")
    seen: set[str] = set()
    for expr in spec.equations.values():
        for node in derivative_nodes(expr):
            chain = [str(v) for v, n in node.variable_count for _ in range(int(n))]
            base = node.expr.func.__name__ if isinstance(node.expr, sp.core.function.AppliedUndef) else _pretty(node.expr)
            current = base
            for variable in chain:
                nxt = f"{current}_{variable}" if current == base else f"{current}{variable}"
                if nxt not in seen:
                    graph.text.append(f"{nxt} = torch.autograd.grad({current}, {variable}, grad_outputs=ones, create_graph=True)[0]")
                    seen.add(nxt)
                current = nxt
    steps.append(graph)
    return Explanation(case.name, intro, steps)
