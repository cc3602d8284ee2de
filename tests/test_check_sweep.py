"""No false alarm on random correct torch programs, in float64 and float32; and a seeded
error in their backward is caught wherever it stands above the noise.

The default run draws 60 programs (and 30 float32 closures); ``pytest -m slow`` (run by
``.ci/run``) draws 2,000 programs and 1,000 closures, and prints the counts: false alarms,
inconclusive verdicts, seeded errors caught.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import derivcheck as dc
from programs import Program, ScaleGrad, programs, random_program

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)


def check_program(program: Program, rel: float, counts: dict[str, int] | None = None) -> None:
    result = dc.check_torch(program, *program.inputs, batched=False)
    if counts is not None:
        counts["programs"] += 1
        counts["inconclusive"] += result.verdict == "inconclusive"
    assert result.ok, f"false alarm on {program!r}:\n{result}"
    bad = dc.check_torch(lambda *a: ScaleGrad.apply(program(*a), rel), *program.inputs, batched=False, name="perturbed")
    # visible: the seeded error of the largest gradient entry stands 30 times above the
    # check's widest bound (a zero derivative -- the sum of a softmax -- has nothing to see)
    gradients = [float(g.abs().max()) for g in torch.autograd.functional.jacobian(program, tuple(program.inputs))]
    largest = gradients if len(gradients) == len(result.quantities) else [max(gradients)] * len(result.quantities)
    visible = [q for q, g in zip(result.quantities, largest) if q.widest_bound is not None and g * rel > 30 * q.widest_bound]
    if visible:
        if counts is not None:
            counts["visible"] += 1
            counts["caught"] += not bad.ok
        assert not bad.ok, f"a {rel:g} relative error in the backward of {program!r} was missed:\n{bad}"


def _jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(fn, x).reshape(-1, x.numel())


VISIBLE = 100.0


def seeded_error_visible(program: Program, rel: float) -> bool:
    """Whether a ``(1 + rel)`` error of the float32 closure's gradient stands, at some entry
    that matters (a tenth of the largest), :data:`VISIBLE` times above both that entry's
    actual float32 rounding error (measured against the same program in float64,
    independently of derivcheck) and the resolution of float32 derivatives of a function
    of this size (``eps`` times its outputs' size over its inputs'): where a softmax has
    saturated, a gradient entry of 1e-11 may happen to come out exact in float32, but no
    float32 computation is expected to resolve it."""
    x32, weights32 = program.inputs[0], program.inputs[1:]
    weights64 = [w.double() for w in weights32]
    j32 = _jacobian(lambda x: program(x, *weights32), x32).double()
    j64 = _jacobian(lambda x: program(x, *weights64), x32.double())
    scale = float(j64.abs().max())
    out = program(x32.double(), *weights64)
    resolution = float(torch.finfo(torch.float32).eps) * float(out.abs().max()) / max(1.0, float(x32.abs().max()))
    entry = rel * j64.abs()
    return bool(torch.any((entry > VISIBLE * (j32 - j64).abs()) & (entry > VISIBLE * resolution) & (j64.abs() > 0.1 * scale)))


def check_closure(program: Program, rel: float, counts: dict[str, int]) -> None:
    """The program as people write modules: its weights (float32) closed over, only its
    input differentiated; the float64 measuring stick must see a ``(1 + rel)`` error."""
    x, weights = program.inputs[0], program.inputs[1:]

    def closure(x: torch.Tensor) -> torch.Tensor:
        return program(x, *weights)

    result = dc.check_torch(closure, x, batched=False)
    counts["programs"] += 1
    counts["inconclusive"] += result.verdict == "inconclusive"
    assert result.ok, f"false alarm on the closure of {program!r}:\n{result}"
    if seeded_error_visible(program, rel):
        bad = dc.check_torch(lambda x: ScaleGrad.apply(closure(x), rel), x, batched=False, name="perturbed")
        counts["visible"] += 1
        counts["caught"] += not bad.ok
        counts["missed"] += bad.ok


def _counts() -> dict[str, int]:
    return {"programs": 0, "inconclusive": 0, "visible": 0, "caught": 0, "missed": 0}


def _report(capsys, title: str, counts: dict[str, int]) -> None:
    with capsys.disabled():
        print(f"\n{title}: {counts['programs']} correct programs, 0 false alarms, {counts['inconclusive']} inconclusive; seeded error visible in {counts['visible']}, caught in {counts['caught']}")


@settings(max_examples=60, derandomize=True, **SETTINGS)
@given(program=programs(), rel=st.sampled_from([1e-2, 1e-4]))
def test_random_programs(program, rel):
    check_program(program, rel if program.inputs[0].dtype == torch.float64 else 1e-2)


def test_float32_closures_are_measured_against_float64():
    counts = _counts()
    for seed in range(30):
        check_closure(random_program(seed, torch.float32), 1e-3, counts)
    # the slow sweep holds the rate to 99% over 1,000 programs; 30 show it is not luck
    assert counts["visible"] >= 10 and counts["caught"] >= 0.9 * counts["visible"], counts


@pytest.mark.slow
@pytest.mark.parametrize("dtype, rels", [(torch.float64, (1e-3, 1e-6)), (torch.float32, (1e-2,))], ids=["float64", "float32"])
def test_random_programs_slow(dtype, rels, capsys):
    counts = _counts()
    for seed in range(1000):
        check_program(random_program(seed, dtype), rels[seed % len(rels)], counts)
    _report(capsys, f"{dtype} programs, seeded {'/'.join(f'{r:g}' for r in rels)}", counts)
    assert counts["inconclusive"] == 0


@pytest.mark.slow
def test_float32_closures_slow(capsys):
    counts = _counts()
    for seed in range(1000):
        check_closure(random_program(seed, torch.float32), 1e-3, counts)
    _report(capsys, "float32 closures (weights closed over), seeded 1e-3", counts)
    assert counts["inconclusive"] == 0
    assert counts["caught"] >= 0.99 * counts["visible"], counts
