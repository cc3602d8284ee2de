"""The network kind's runner: a loaded :class:`~derivcheck.kinds.network.case.Case` through its engines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from derivcheck.runner import CaseResult, run_problem

if TYPE_CHECKING:
    from derivcheck.kinds.network.case import Case


def run_network(case: "Case", *, device: str = "cpu") -> CaseResult:
    """Run a validated network :class:`~derivcheck.kinds.network.case.Case` with its engines."""
    from derivcheck.engines import make_engines

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
    result.meta = {"dtype": case.problem.dtype, "seed": case.seed, "device": device, "samples": case.problem.batch, **case.problem.meta, **result.meta}
    return result


def run_network_case(case: "Case", *, device: str = "cpu") -> list[CaseResult]:
    """The network kind's runner: :func:`run_network` as a one-result list."""
    return [run_network(case, device=device)]
