"""explain for RNN, GRU and LSTM: gates in PyTorch's layout, the state path, BPTT step by
step against the unrolled torch cell, the gradient-norm chart; a wrong gate order or a
dropped BPTT term is ✗ at exactly the step that uses it."""

from __future__ import annotations

import numpy as np
import pytest

from derivcheck import load_case
from derivcheck.explain_steps import explain
from derivcheck.layers.recurrent import GRU, LSTM
from helpers import CASES, assert_golden, make_problem, normalize_explanation

LSTM_STEPS = {
    "gates": "Layer 0 (lstm): gates in PyTorch's order and layout",
    "path": "Layer 0 (lstm): the state path through time",
    "bptt": "Layer 0 (lstm): backpropagation through time",
    "norms": "Layer 0 (lstm): gradient norms over time",
}


@pytest.mark.parametrize(("stem", "kind"), [("lstm-classifier", "lstm"), ("gru-regression", "gru"), ("rnn-tanh", "rnn")])
def test_recurrent_cases_explain_every_time_step(stem, kind):
    result = explain(load_case(CASES / f"{stem}.toml"))
    assert result.ok, result.failing_steps()
    titles = [s.title for s in result.steps]
    assert f"Layer 0 ({kind}): backpropagation through time" in titles and f"Layer 0 ({kind}): gradient norms over time" in titles
    text = result.to_text()
    assert "at t = 1:" in text and "t=0   |" in text and "||dL/dh_0|| / ||dL/dh_T||" in text


def test_lstm_layout_and_cell_path_are_spelled_out():
    text = explain(load_case(CASES / "lstm-classifier.toml")).to_text()
    assert "in the order i, f, g, o: W_ii = weight_ih_l0[0:5], W_if = weight_ih_l0[5:10]" in text
    assert "c_t = f_t * c_{t-1} + i_t * g_t" in text and "dL/dc_{t+1} * f_{t+1}" in text
    assert "[✓] the unrolled lstm cell reproduces the module" in text


def test_lstm_gates_cached_in_the_wrong_order_fail_at_the_gates_step_only(monkeypatch):
    """The forward stays right (so do the loss and later layers); only the cache that the
    gates step reads holds (i, f, o, g)."""
    original = LSTM.numpy_forward

    def swapped(self, x, params):
        y, (xs, hs, cs, gates) = original(self, x, params)
        return y, (xs, hs, cs, [(i, f, o, g) for i, f, g, o in gates])

    monkeypatch.setattr(LSTM, "numpy_forward", swapped)
    failing = explain(load_case(CASES / "lstm-classifier.toml")).failing_steps()
    assert LSTM_STEPS["gates"] in failing
    for ok in (LSTM_STEPS["path"], "Forward pass, layer by layer", "Loss (cross_entropy) and its derivative", "Layer 1 (linear): unit 0 of 3, then every unit at once"):
        assert ok not in failing


def test_lstm_backward_without_the_carried_cell_gradient_fails_at_bptt(monkeypatch):
    """dL/dc_t without dL/dc_{t+1} * f_{t+1}: the classic truncated BPTT. ✗ at the BPTT
    step; the gates and the state path (forward) stay ✓."""

    def truncated(self, grad_y, cache, params):
        xs, hs, cs, gates = cache
        direct = self._output_grads(grad_y)
        grads = self._zero_grads(params, grad_y.dtype)
        dx = np.zeros_like(xs)
        dh = np.zeros_like(hs[0])
        for t in range(self.steps - 1, -1, -1):
            i, f, g, o = gates[t]
            dh = dh + direct[t]
            tanh_c = np.tanh(cs[t + 1])
            dc = dh * o * (1 - tanh_c**2)  # the carried dc_{t+1} f_{t+1} is dropped
            dz = np.concatenate([dc * g * i * (1 - i), dc * cs[t] * f * (1 - f), dc * i * (1 - g**2), dh * tanh_c * o * (1 - o)], axis=1)
            dx[:, t], dh = self._step_back(grads, params, dz, dz, xs[:, t], hs[t])
        return dx.reshape(xs.shape[0], -1), self._finish(grads, params, dh, np.zeros_like(cs[0]))

    monkeypatch.setattr(LSTM, "numpy_backward", truncated)
    result = explain(load_case(CASES / "lstm-classifier.toml"))
    failing = result.failing_steps()
    assert LSTM_STEPS["bptt"] in failing
    assert LSTM_STEPS["gates"] not in failing and LSTM_STEPS["path"] not in failing
    text = result.to_text()
    assert "[✓] dL/dx_t at t = 6" in text and "[✗] dL/dx_t at t = 1" in text  # nothing is carried into the last step


def test_gru_with_reset_applied_to_the_whole_candidate_fails_at_the_gates_step(monkeypatch):
    """n = tanh(r * (W_in x + b_in + W_hn h + b_hn)) is a common misreading of PyTorch's
    GRU (r multiplies the hidden part only): ✗ at the gates step."""
    original = GRU.numpy_forward

    def misread(self, x, params):
        y, (xs, hs, caches) = original(self, x, params)
        wrong = []
        for t, (r, z, n, hn) in enumerate(caches):
            gi, _ = self._pre(params, xs[:, t], hs[t])
            wrong.append((r, z, np.tanh(r * (gi[:, 2 * self.hidden :] + hn)), hn))
        return y, (xs, hs, wrong)

    monkeypatch.setattr(GRU, "numpy_forward", misread)
    failing = explain(load_case(CASES / "gru-regression.toml")).failing_steps()
    assert "Layer 0 (gru): gates in PyTorch's order and layout" in failing
    assert "Forward pass, layer by layer" not in failing


def test_long_sequences_show_the_first_and_last_steps_and_check_the_rest_in_bulk():
    from derivcheck.kinds.network.explain_layers.layered import explain_layered

    problem = make_problem([("lstm", {"input_size": 2, "hidden_size": 3}), ("linear", {"in": 3, "out": 1})], batch=2, in_shape=(12, 2), seed=4)
    result = explain_layered(type("Case", (), {"name": "long", "problem": problem})())
    assert result.ok, result.failing_steps()
    text = result.to_text()
    assert "h_t at t = 2:" in text and "h_t at t = 11:" in text and "h_t at t = 5:" not in text
    assert "h_t at t = 3..10 (in bulk)" in text


def test_golden_markdown():
    assert_golden(normalize_explanation(explain(load_case(CASES / "lstm-classifier.toml")).to_markdown()), "explain/lstm-classifier.md")
