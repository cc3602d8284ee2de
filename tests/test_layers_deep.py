"""Convolution, pooling, normalisation, dropout, embedding, recurrent and attention layers:
every engine agrees on them (float64, exact-engine tolerance), Hypothesis draws shapes
valid for torch, invalid shapes fail before any engine runs, and seeded bugs in the
hand-written backward rules are caught and blamed on the numpy engine."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from derivcheck.engines import NETWORK_ENGINES, make_engines
from derivcheck.layers import LAYERS, attention, conv, norm, recurrent
from derivcheck.problem import Network
from derivcheck.runner import run_problem

from helpers import layer, make_problem

QUANTITIES = ["L", "dL/dparams", "dL/dx", "dy/dx"]

CONFIGS = [
    (
        "conv2d stride/padding/groups",
        [("conv2d", dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=1, groups=2)), ("tanh", {}), ("flatten", {}), ("linear", {"in": 36, "out": 3})],
        (2, 6, 6),
        QUANTITIES,
    ),
    ("conv2d dilation, rectangular", [("conv2d", dict(in_channels=2, out_channels=2, kernel_size=[2, 3], dilation=2, bias=False)), ("flatten", {})], (2, 6, 7), QUANTITIES),
    ("conv1d", [("conv1d", dict(in_channels=3, out_channels=2, kernel_size=3, padding=1, stride=2))], (3, 7), QUANTITIES),
    ("max_pool2d", [("max_pool2d", dict(kernel_size=2)), ("flatten", {})], (2, 4, 4), QUANTITIES),
    ("avg_pool2d padded", [("avg_pool2d", dict(kernel_size=3, stride=2, padding=1)), ("flatten", {})], (2, 5, 5), QUANTITIES),
    ("rnn", [("rnn", dict(input_size=3, hidden_size=4)), ("linear", {"in": 4, "out": 2})], (5, 3), QUANTITIES),
    ("lstm sequence", [("lstm", dict(input_size=3, hidden_size=4, output="sequence")), ("flatten", {})], (4, 3), QUANTITIES),
    ("lstm no bias, zero state", [("lstm", dict(input_size=2, hidden_size=3, bias=False, initial_state="zeros"))], (3, 2), QUANTITIES),
    ("gru", [("gru", dict(input_size=3, hidden_size=4)), ("tanh", {})], (5, 3), QUANTITIES),
    ("layer_norm per position", [("layer_norm", dict(normalized_shape=4)), ("flatten", {})], (3, 4), QUANTITIES),
    ("layer_norm no affine", [("layer_norm", dict(normalized_shape=[3, 4], elementwise_affine=False)), ("flatten", {})], (3, 4), QUANTITIES),
    ("batch_norm1d eval", [("batch_norm1d", dict(num_features=3, mode="eval")), ("flatten", {})], (3, 4), QUANTITIES),
    ("batch_norm1d train", [("batch_norm1d", dict(num_features=3)), ("linear", {"in": 3, "out": 2})], (3,), ["L", "dL/dparams", "dL/dx"]),
    ("batch_norm2d train", [("batch_norm2d", dict(num_features=2)), ("flatten", {})], (2, 3, 3), ["L", "dL/dparams", "dL/dx"]),
    ("dropout train", [("dropout", dict(p=0.3, seed=4)), ("flatten", {}), ("linear", {"in": 12, "out": 2})], (3, 4), QUANTITIES),
    ("sdpa causal", [("sdpa", dict(causal=True)), ("flatten", {})], (4, 6), QUANTITIES),
    ("multihead_attention", [("multihead_attention", dict(embed_dim=4, num_heads=2)), ("flatten", {})], (3, 4), QUANTITIES),
    ("transformer_encoder causal gelu", [("transformer_encoder", dict(embed_dim=4, num_heads=2, dim_feedforward=8, causal=True, activation="gelu")), ("flatten", {})], (3, 4), QUANTITIES),
]


def _run(specs, in_shape, quantities=QUANTITIES, batch=4, seed=0):
    problem = make_problem(specs, loss="mse", batch=batch, in_shape=in_shape, seed=seed)
    return problem, run_problem(problem, make_engines(list(NETWORK_ENGINES)), quantities)


@pytest.mark.parametrize("title,specs,in_shape,quantities", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_layer_agrees_across_engines(title, specs, in_shape, quantities):
    _, result = _run(specs, in_shape, quantities)
    assert not result.errors
    for q in result.quantities:
        assert q.verdict == "agree", (q.name, q.message)
        assert q.max_rel_error_exact < 1e-12, (q.name, q.max_rel_error_exact)


def test_embedding_gradient_reaches_only_the_rows_used():
    network = Network.build([layer("embedding", num_embeddings=6, embedding_dim=3), layer("flatten"), layer("tanh")], in_shape=(4,))
    from derivcheck.layers import LOSSES
    from derivcheck.problem import Problem

    x = np.array([[0, 2, 2, 5], [5, 0, 0, 2]], dtype=float)
    loss = LOSSES["mse"]()
    problem = Problem(network, network.init_params(0), x, loss, np.ones((2, 12)))
    result = run_problem(problem, make_engines(list(NETWORK_ENGINES)), ["L", "dL/dparams"])
    assert result.verdict == "agree"
    for engine in make_engines(list(NETWORK_ENGINES)):
        from derivcheck.quantities import expand_quantities

        grad = engine.compute(problem, expand_quantities(["dL/dparams"], problem))["dL/d0.weight"].values
        assert np.all(grad[[1, 3, 4]] == 0) and np.all(np.abs(grad[[0, 2, 5]]).sum(axis=1) > 0), engine.name
    with pytest.raises(ValueError, match="inputs of embedding are indices"):
        from derivcheck.quantities import expand_quantities

        expand_quantities(["dL/dx"], problem)
    with pytest.raises(ValueError, match=r"integer indices in 0\.\.5, got 6\.0"):
        network.layers[0].sample_constants(np.array([[0, 1, 2, 6.0]]))


def test_batch_norm_train_has_no_per_sample_jacobian():
    problem = make_problem([("batch_norm1d", dict(num_features=3))], in_shape=(3,))
    from derivcheck.quantities import expand_quantities

    with pytest.raises(ValueError, match="batch_norm1d couples the samples"):
        expand_quantities(["dy/dx"], problem)


def test_max_pool_ties_are_reported_as_kinks():
    problem = make_problem([("max_pool2d", dict(kernel_size=2)), ("flatten", {})], in_shape=(1, 4, 4), batch=3)
    problem.x[1, 0] = problem.x[1, 1]  # a tie in the first window of sample 1
    result = run_problem(problem, make_engines(list(NETWORK_ENGINES)), ["dL/dx", "dy/dx"])
    assert result.verdict == "kink"
    assert any("max_pool2d" in k and "sample 1" in k for k in result.kinks)
    assert all(q.verdict == "kink" for q in result.quantities)


def test_dropout_eval_is_identity_and_train_mask_is_seeded():
    drop = layer("dropout", p=0.5, seed=3)
    drop.bind((10,))
    x = np.ones((4, 10))
    y1, _ = drop.numpy_forward(x, {})
    y2, _ = drop.numpy_forward(x, {})
    np.testing.assert_array_equal(y1, y2)
    assert set(np.unique(y1)) <= {0.0, 2.0} and 0 < (y1 == 0).sum() < 40
    module = Network.build([drop], in_shape=(10,)).torch_model({})
    np.testing.assert_array_equal(module(torch.ones(4, 10, dtype=torch.float64)).numpy(), y1)
    evaluation = layer("dropout", p=0.5, mode="eval")
    evaluation.bind((10,))
    np.testing.assert_array_equal(evaluation.numpy_forward(x, {})[0], x)


def test_recurrent_time_step_norms_and_clipping():
    problem = make_problem([("lstm", dict(input_size=2, hidden_size=3)), ("linear", {"in": 3, "out": 2})], in_shape=(6, 2), batch=4)
    problem.clip_max_norm = 1e-3
    result = run_problem(problem, make_engines(list(NETWORK_ENGINES)), ["dL/dparams", "dL/dx", "clip_grad"])
    assert result.verdict == "agree"
    steps = result.meta["time_step_gradient_norms"]
    assert set(steps) == set(NETWORK_ENGINES) and len(steps["torch"]) == 6
    np.testing.assert_allclose(steps["numpy"], steps["torch"], rtol=1e-12)
    clip = next(q for q in result.quantities if q.name == "clip_grad")
    assert "torch clip_grad_norm_" in clip.worst.values if clip.worst else True


# -- shapes --------------------------------------------------------------------------------
@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 2))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 2))
    dilation = draw(st.integers(1, 2))
    padding = draw(st.integers(0, kernel // 2))
    size = draw(st.integers(1, 6))
    return dict(in_channels=c_in, out_channels=c_out, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, groups=groups), size


def _torch_accepts(options, size):
    module = torch.nn.Conv2d(
        options["in_channels"], options["out_channels"], options["kernel_size"], stride=options["stride"], padding=options["padding"], dilation=options["dilation"], groups=options["groups"]
    )
    try:
        module(torch.zeros(1, options["in_channels"], size, size))
    except RuntimeError:
        return False
    return True


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_conv_shapes_valid_for_torch_agree_and_invalid_ones_fail_early(config):
    options, size = config
    in_shape = (options["in_channels"], size, size)
    if not _torch_accepts(options, size):
        with pytest.raises(ValueError, match="does not fit"):
            Network.build([layer("conv2d", **options)], in_shape=in_shape)
        return
    _, result = _run([("conv2d", options), ("flatten", {})], in_shape, ["L", "dL/dparams", "dL/dx"], batch=2)
    assert result.verdict == "agree", [q.message for q in result.quantities if not q.ok]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["rnn", "lstm", "gru"]), steps=st.integers(1, 4), features=st.integers(1, 3), hidden=st.integers(1, 3))
def test_recurrent_shapes_agree(kind, steps, features, hidden):
    specs = [(kind, dict(input_size=features, hidden_size=hidden, output="sequence")), ("flatten", {})]
    _, result = _run(specs, (steps, features), ["L", "dL/dparams", "dL/dx"], batch=2)
    assert result.verdict == "agree", [q.message for q in result.quantities if not q.ok]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads=st.integers(1, 3), head_dim=st.integers(1, 2), steps=st.integers(1, 3), causal=st.booleans())
def test_attention_shapes_agree(heads, head_dim, steps, causal):
    d = heads * head_dim
    specs = [("multihead_attention", dict(embed_dim=d, num_heads=heads, causal=causal)), ("flatten", {})]
    _, result = _run(specs, (steps, d), ["L", "dL/dparams", "dL/dx"], batch=2)
    assert result.verdict == "agree", [q.message for q in result.quantities if not q.ok]


@pytest.mark.parametrize(
    "specs,in_shape,message",
    [
        ([("conv2d", dict(in_channels=3, out_channels=2, kernel_size=3))], (2, 5, 5), "expects 3 input channels"),
        ([("conv2d", dict(in_channels=2, out_channels=3, kernel_size=3, groups=2))], (2, 5, 5), "divisible by groups"),
        ([("conv2d", dict(in_channels=1, out_channels=1, kernel_size=5))], (1, 3, 3), "does not fit"),
        ([("conv2d", dict(in_channels=1, out_channels=1, kernel_size=3, padding=2))], (1, 5, 5), "at most half the kernel"),
        ([("conv2d", dict(in_channels=1, out_channels=1, kernel_size=3))], (9,), r"samples of shape \(C, H, W\)"),
        ([("lstm", dict(input_size=3, hidden_size=2))], (4, 2), r"sequences of shape \(T, 3\)"),
        ([("multihead_attention", dict(embed_dim=5, num_heads=2))], (3, 5), "divisible by num_heads"),
        ([("conv1d", dict(in_channels=1, out_channels=1, kernel_size=2)), ("linear", {"in": 3, "out": 1})], (1, 4), "add .*flatten"),
        ([("layer_norm", dict(normalized_shape=5))], (3, 4), "trailing axes"),
        ([("batch_norm2d", dict(num_features=2))], (2, 4), r"\(C, H, W\) with C = 2"),
    ],
)
def test_invalid_shapes_fail_before_any_engine(specs, in_shape, message):
    with pytest.raises(ValueError, match=message):
        Network.build([layer(kind, **opts) for kind, opts in specs], in_shape=in_shape)


def test_catalog_contains_the_new_layers():
    assert {"conv1d", "conv2d", "max_pool2d", "avg_pool2d", "flatten", "dropout", "layer_norm", "batch_norm1d", "batch_norm2d",
            "embedding", "rnn", "lstm", "gru", "sdpa", "multihead_attention", "transformer_encoder"} <= set(LAYERS)  # fmt: skip


# -- mutations: a seeded bug in a hand-written backward must be caught ---------------------
def _assert_numpy_blamed(specs, in_shape, quantities=("dL/dparams", "dL/dx")):
    _, result = _run(specs, in_shape, list(quantities))
    bad = [q for q in result.quantities if q.verdict == "disagree"]
    assert bad, "the seeded bug went unnoticed"
    assert all(q.odd_engine == "numpy" for q in bad), [(q.name, q.odd_engine) for q in bad]


def test_mutation_conv_backward_without_flip(monkeypatch):
    """dL/dx of a convolution is the full correlation of dL/dy with the *flipped* kernel;
    a backward that uses the kernel unflipped is wrong."""

    def wrong_backward(self, grad_y, cache, params):
        right_dx, grads = original(self, grad_y, cache, {**params})
        flipped = {**params, "weight": params["weight"][..., ::-1, ::-1]}
        wrong_dx, _ = original(self, grad_y, cache, flipped)
        return wrong_dx, grads

    original = conv._Conv.numpy_backward
    monkeypatch.setattr(conv._Conv, "numpy_backward", wrong_backward)
    _assert_numpy_blamed([("conv2d", dict(in_channels=1, out_channels=2, kernel_size=3, padding=1)), ("flatten", {})], (1, 4, 4), ("dL/dx",))


def test_mutation_lstm_swapped_gate_order(monkeypatch):
    """A BPTT that lays out the gates as i, f, o, g instead of PyTorch's i, f, g, o: it
    reads the wrong weight rows and writes its gate gradients into the wrong rows."""

    def swapped_backward(self, grad_y, cache, params):
        h = self.hidden
        order = np.r_[0 : 2 * h, 3 * h : 4 * h, 2 * h : 3 * h]
        permuted = {k: (v[order] if k.startswith(("weight", "bias")) else v) for k, v in params.items()}
        dx, grads = original(self, grad_y, cache, permuted)
        return dx, {k: (v[order] if k.startswith(("weight", "bias")) else v) for k, v in grads.items()}

    original = recurrent.LSTM.numpy_backward
    monkeypatch.setattr(recurrent.LSTM, "numpy_backward", swapped_backward)
    _assert_numpy_blamed([("lstm", dict(input_size=2, hidden_size=3)), ("linear", {"in": 3, "out": 2})], (3, 2))


def test_mutation_layer_norm_backward_missing_mean_term(monkeypatch):
    def wrong_backward(self, grad_y, cache, params):
        x_hat, inv = cache
        gy = grad_y.reshape(x_hat.shape)
        d_hat = gy * params["weight"].ravel()
        dx = inv * (d_hat - x_hat * (d_hat * x_hat).mean(axis=-1, keepdims=True))  # no "- mean(d_hat)"
        _, grads = original(self, grad_y, cache, params)
        return dx.reshape(grad_y.shape[0], -1), grads

    original = norm.LayerNorm.numpy_backward
    monkeypatch.setattr(norm.LayerNorm, "numpy_backward", wrong_backward)
    _assert_numpy_blamed([("layer_norm", dict(normalized_shape=4)), ("flatten", {}), ("linear", {"in": 12, "out": 2})], (3, 4), ("dL/dx",))


def test_mutation_attention_without_scale(monkeypatch):
    """An attention backward that forgets the 1/sqrt(d) of the scores."""

    def unscaled_backward(grad_out, cache):
        q, k, v, weights, _scale = cache
        return original(grad_out, (q, k, v, weights, 1.0))

    original = attention.attention_backward
    monkeypatch.setattr(attention, "attention_backward", unscaled_backward)
    _assert_numpy_blamed([("multihead_attention", dict(embed_dim=4, num_heads=2)), ("flatten", {})], (3, 4))


def test_symbolic_engine_skips_networks_beyond_its_limits_and_says_why():
    problem = make_problem([("linear", {"in": 3, "out": 120}), ("softmax", {})], batch=2)
    result = run_problem(problem, make_engines(["symbolic", "numpy", "torch"]), ["L", "dL/dparams"])
    assert result.verdict == "agree"
    for q in result.quantities:
        assert "120x120 local Jacobian" in q.skipped["symbolic"] and "other engines still run" in q.skipped["symbolic"]
        assert set(q.engines) == {"numpy", "torch"}


def test_a_wide_linear_layer_is_derived_from_one_term_and_agrees():
    """A 120x100 linear layer used to be beyond the whole-layer limit; its one derived
    product term now serves any width."""
    problem = make_problem([("linear", {"in": 120, "out": 100}), ("tanh", {})], batch=2)
    result = run_problem(problem, make_engines(["symbolic", "numpy", "torch"]), ["L", "dL/dparams", "dL/dx", "dy/dx"])
    assert result.verdict == "agree"
    assert all("symbolic" in q.engines for q in result.quantities)


def test_local_rule_vjp_and_jacobian_are_consistent():
    """The symbolic local rule's reverse (VJP) and forward (Jacobian) accumulations agree."""
    from derivcheck.engines.symbolic.layers import compile_layer

    lstm = layer("lstm", input_size=2, hidden_size=3, output="sequence")
    lstm.bind((4, 2))
    compiled = compile_layer(lstm, 8)
    rng = np.random.default_rng(0)
    params = [float(v) for v in rng.standard_normal(sum(int(np.prod(s)) for s in lstm.param_shapes().values()))]
    a = rng.standard_normal((8, 5))
    g = rng.standard_normal((12, 5))
    jac = compiled.jacobian(a, params)  # (N, out, in)
    cot_in, _ = compiled.vjp(a, params, g)
    np.testing.assert_allclose(cot_in.T, np.einsum("nk,nkj->nj", g.T, jac), rtol=1e-12, atol=1e-14)
