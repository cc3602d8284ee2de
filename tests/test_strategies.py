"""Public Hypothesis strategies, and shrinking to a minimal counterexample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st

import derivcheck as dc
from derivcheck import strategies as dcs


@given(dcs.inputs(shape=dcs.batch_features(max_batch=4, max_features=5)))
def test_inputs_are_well_conditioned_tensors(x):
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float64
    assert 1 <= x.shape[0] <= 4 and 1 <= x.shape[1] <= 5
    assert torch.all(x.abs() >= 1e-2) and torch.all(x.abs() <= 3)


@given(dcs.inputs(shape=(2, 3), kind="numpy", dtype="float32"))
def test_numpy_float32_inputs(x):
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (2, 3)


@given(dcs.image_shapes(), dcs.sequence_shapes())
def test_shape_strategies(image, sequence):
    assert len(image) == 4 and len(sequence) == 3 and min(image + sequence) >= 1


@given(dcs.network_specs())
def test_network_specs_build_valid_cases(layers):
    case = dc.case_from_dict({"network": layers, "inputs": {"batch": 2}})
    assert case.problem.network.in_size == layers[0]["in"]


@given(dcs.points({"x": [0, 1], "t": [-2, 0]}))
def test_points_lie_in_the_domain(p):
    assert p.shape[1] == 2 and np.all((p[:, 0] >= 0) & (p[:, 0] <= 1)) and np.all((p[:, 1] >= -2) & (p[:, 1] <= 0))


def test_strategy_arguments_are_validated():
    with pytest.raises(dc.InvalidArgument, match="kind must be"):
        dcs.inputs(shape=(2,), kind="jax")
    with pytest.raises(dc.InvalidArgument, match="min_magnitude"):
        dcs.arrays((2,), min_magnitude=2, max_magnitude=1)
    with pytest.raises(dc.InvalidArgument, match="low < high"):
        dcs.points({"x": [1, 0]})


class CrossFeatureBug(torch.autograd.Function):
    """y_i = x_i * sum(x): the backward forgets the cross terms, which only matter with 2+ features."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x.sum(dim=-1, keepdim=True)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.sum(dim=-1, keepdim=True) + x)


def test_failure_shrinks_to_a_minimal_counterexample():
    shapes = dcs.batch_features(max_batch=6, max_features=6)
    failing = find(
        dcs.inputs(shape=shapes),
        lambda x: not dc.check_torch(CrossFeatureBug.apply, x, taylor=False).ok,
        settings=settings(database=None, max_examples=200, deadline=None),
    )
    assert tuple(failing.shape) == (1, 2)  # one sample, the two features the bug needs


def test_profiles_are_registered():
    settings.get_profile("derivcheck-ci")
    assert settings.get_profile("derivcheck-ci").derandomize is True
    assert settings.get_profile("derivcheck-ci").database is None


@settings(max_examples=5)
@given(st.data())
def test_recipe_from_the_docs(data):
    x = data.draw(dcs.inputs(shape=(3, 4)))
    dc.assert_torch(torch.tanh, x)


@pytest.mark.parametrize("dtype", ["float32", torch.float32, np.float32, np.dtype("float32")])
def test_inputs_accept_torch_and_numpy_dtypes(dtype):
    x = find(dcs.inputs(shape=(2,), dtype=dtype), lambda _: True)
    assert x.dtype == torch.float32


def test_inputs_like_a_module_match_its_dtype_and_an_ordinary_module_passes():
    """The README's snippet with an ordinary float32 nn.Module: inputs drawn like= the
    module are float32, and the check passes (no dtype clash, no false alarm)."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())

    @settings(max_examples=5, deadline=None)
    @given(x=dcs.inputs(shape=(2, 4), like=layer))
    def check(x):
        assert x.dtype == torch.float32
        dc.assert_torch(layer, x)

    check()
    assert find(dcs.inputs(shape=(1,), like=torch.zeros(1, dtype=torch.float64)), lambda _: True).dtype == torch.float64
    assert find(dcs.inputs(shape=(1,), like=layer.double()), lambda _: True).dtype == torch.float64


def test_inputs_dtype_errors_say_what_is_allowed():
    with pytest.raises(dc.InvalidArgument, match="dtype must be float64 or float32.*int64"):
        dcs.inputs(shape=(2,), dtype=torch.int64)
    with pytest.raises(dc.InvalidArgument, match="contradicts like="):
        dcs.inputs(shape=(2,), dtype="float64", like=torch.nn.Linear(2, 2))
    with pytest.raises(dc.InvalidArgument, match="like must be"):
        dcs.inputs(shape=(2,), like="float32")


@pytest.mark.parametrize("wrap", [False, True])
def test_a_dtype_clash_says_how_to_fix_it(wrap):
    layer = torch.nn.Linear(3, 2)
    fn = (lambda x: torch.tanh(layer(x))) if wrap else layer
    with pytest.raises(dc.InvalidArgument, match=r"(your module is|its parameters .* are) float32 and the inputs float64: pass dtype=torch.float32.*\.double\(\) the module"):
        dc.check_torch(fn, torch.randn(4, 3, dtype=torch.float64))
