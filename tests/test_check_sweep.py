"""No false alarm on random correct torch programs, in float64 and float32; and a seeded
error in their backward is caught wherever it stands above the noise.

The default run draws 60 programs; ``pytest -m slow`` (run by ``.ci/run``) draws 2,000.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import derivcheck as dc
from programs import Program, ScaleGrad, programs

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)


def check_program(program: Program, rel: float) -> None:
    result = dc.check_torch(program, *program.inputs, batched=False)
    assert result.ok, f"false alarm on {program!r}:\n{result}"
    bad = dc.check_torch(lambda *a: ScaleGrad.apply(program(*a), rel), *program.inputs, batched=False, name="perturbed")
    visible = [q for q in result.quantities if q.worst is not None and q.scale * rel > 30 * max(q.worst.tolerance, 1e-300)]
    if visible:
        assert not bad.ok, f"a {rel:g} relative error in the backward of {program!r} was missed:\n{bad}"


@settings(max_examples=60, derandomize=True, **SETTINGS)
@given(program=programs(), rel=st.sampled_from([1e-2, 1e-4]))
def test_random_programs(program, rel):
    check_program(program, rel if program.inputs[0].dtype == torch.float64 else 1e-2)


@pytest.mark.slow
@settings(max_examples=1000, derandomize=True, **SETTINGS)
@given(program=programs(dtype=torch.float64), rel=st.sampled_from([1e-3, 1e-6]))
def test_random_programs_float64_slow(program, rel):
    check_program(program, rel)


@pytest.mark.slow
@settings(max_examples=1000, derandomize=True, **SETTINGS)
@given(program=programs(dtype=torch.float32))
def test_random_programs_float32_slow(program):
    check_program(program, 1e-2)
