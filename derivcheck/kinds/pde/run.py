"""The PDE kind's runner: every field problem of a :class:`~derivcheck.kinds.pde.case.FieldCase`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from derivcheck.runner import CaseResult, run_field_problem

if TYPE_CHECKING:
    from derivcheck.kinds.pde.case import FieldCase


def run_field_case(case: "FieldCase", *, device: str = "cpu") -> list[CaseResult]:
    """Run every field problem of a PDE case; one result per checked field kind."""
    from derivcheck.engines import make_engines

    out = []
    for problem in case.problems:
        engines = make_engines(case.engines, device=device, finite_diff=case.finite_diff)
        result = run_field_problem(
            problem,
            engines,
            case.quantities,
            name=f"{case.name} [{problem.kind}]",
            tolerance=case.tolerance,
            file=case.file,
            description=case.description,
        )
        result.meta = {"dtype": problem.dtype, "seed": case.seed, "device": device, "points": problem.n_points, "field": problem.kind, **problem.meta, **result.meta}
        out.append(result)
    return out
