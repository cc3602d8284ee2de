"""Field problems in the numpy engine: hand-written second-order jets of the network.

Only network fields: an exact solution has no hand-written derivative rules to check.
Derivatives up to order 2 (the jets' order); compound derivatives are expanded onto the
fields by the product rule first. The PINN-loss parameter gradients would need a
hand-written backward through the jets, which this engine does not have: it says so.
"""

from __future__ import annotations

import numpy as np

from collections.abc import Sequence

from derivcheck.fields import FieldProblem, FieldQuantity
from derivcheck.jets import JetUnsupported, evaluate_with_jets, network_jets
from derivcheck.values import EngineResult, EngineValue, Skipped


def compute_fields(problem: FieldProblem, quantities: Sequence[FieldQuantity]) -> EngineResult:
    if problem.kind == "exact":
        return {q.name: Skipped("the numpy engine checks hand-written rules of networks; an exact solution has none") for q in quantities}
    assert problem.network is not None and problem.params is not None
    try:
        jets = network_jets(problem.network, problem.params, problem.points)
    except JetUnsupported as exc:
        return {q.name: Skipped(str(exc)) for q in quantities}
    h, jac, hess = jets
    note = "hand-written second-order jets, float64"
    result: EngineResult = {}
    for q in quantities:
        if q.kind in ("derivative", "operator", "residual"):
            try:
                result[q.name] = EngineValue(evaluate_with_jets(problem, q.expr, jets, problem.points), note=note)
            except JetUnsupported as exc:
                result[q.name] = Skipped(str(exc))
        elif q.kind == "grad":
            assert q.field_name is not None
            result[q.name] = EngineValue(np.asarray(jac)[:, problem.spec.fields.index(q.field_name), :].copy(), note=note)
        elif q.kind == "hessian":
            assert q.field_name is not None
            result[q.name] = EngineValue(np.asarray(hess)[:, problem.spec.fields.index(q.field_name)].copy(), note=note)
        elif q.kind in ("pinn_grad", "lambda_hat"):
            result[q.name] = Skipped("no hand-written backward through second-order jets")
        else:
            result[q.name] = Skipped(f"numpy does not compute {q.kind} quantities")
    return result
