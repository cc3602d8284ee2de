"""derivcheck explain: every small shipped case checks out, a seeded wrong local derivative
shows up as ✗ at the right step, large cases are refused with a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from derivcheck import cli, load_case
from derivcheck.explain_steps import ExplainTooLarge, explain
from derivcheck.layers.activations import Tanh

CASES = Path(__file__).parent.parent / "cases"
NOT_EXPLAINED = {
    "tanh-20-20-20": "too large",
    "deep-sigmoid-10": "too large",
    "deep-relu-10": "too large",
    "digits-mlp": "too large",
    "lenet-digits": "uses avg_pool2d, conv2d, flatten",
    "lstm-classifier": "uses lstm",
    "gru-regression": "uses flatten, gru",
    "transformer-block": "uses embedding, flatten, transformer_encoder",
    "gan-step": "is a GAN step",
}
SMALL = [p for p in sorted(CASES.rglob("*.toml")) if p.stem not in NOT_EXPLAINED]


@pytest.mark.parametrize("stem", sorted(NOT_EXPLAINED))
def test_cases_explain_does_not_cover_are_refused_with_a_reason(stem):
    with pytest.raises(ExplainTooLarge, match=NOT_EXPLAINED[stem]):
        explain(load_case(CASES / f"{stem}.toml"))


@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.stem)
def test_every_small_case_checks_out(path):
    result = explain(load_case(path))
    assert result.ok, result.failing_steps()
    assert len(result.steps) >= 3
    assert all(step.checks or "Autograd" in step.title or "Operators" in step.title for step in result.steps)


def test_network_steps_and_formats():
    result = explain(load_case(CASES / "seq-16-8-4-2.toml"))
    titles = [s.title for s in result.steps]
    assert titles[0] == "Forward pass" and titles[-2:] == ["Vector chain rule (backward)", "Total derivative"]
    text = result.to_text()
    assert "z1 = W1 x + b1" in text and "da1/dz1 = diag(relu'(z1))" in text and "dL/dz3 = softmax(z3) - t" in text
    assert "torch retain_grad" in text and "[✓]" in text
    markdown = result.to_markdown()
    assert "$$ z_{1} = W_{1} x + b_{1} $$" in markdown and "✓" in markdown
    latex = result.to_latex()
    assert latex.startswith(r"\documentclass{article}") and r"\checkmark" in latex and latex.rstrip().endswith(r"\end{document}")
    assert result._repr_markdown_() == markdown and result._repr_latex_().startswith("$$")


def test_seeded_wrong_local_derivative_is_marked_at_its_step(monkeypatch):
    monkeypatch.setattr(Tanh, "numpy_backward", lambda self, g, cache, params: (g * (1 - cache), {}))
    result = explain(load_case(CASES / "tanh-regression.toml"))
    assert not result.ok
    failing = result.failing_steps()
    assert "Local derivative of layer 1 (tanh)" in failing and "Local derivative of layer 3 (tanh)" in failing
    assert "Forward pass" not in failing and "Local derivative of layer 0 (linear)" not in failing
    assert "[✗] da1/dz1" in result.to_text()


def test_pde_explanation():
    result = explain(load_case(CASES / "pde" / "helmholtz-mms.toml"))
    text = result.to_text()
    assert "laplacian(u) = u_xx + u_yy" in text
    assert "u_xx = -pi**2*a1**2*sin(pi*a1*x)*sin(pi*a2*y)" in text
    assert "u_xx = torch.autograd.grad(u_x, x, grad_outputs=ones, create_graph=True)[0]" in text


def test_large_case_is_refused_with_a_hint(capsys):
    with pytest.raises(ExplainTooLarge, match="shrink the layers"):
        explain(load_case(CASES / "tanh-20-20-20.toml"))
    assert cli.main(["explain", str(CASES / "tanh-20-20-20.toml")]) == 4
    assert "too large" in capsys.readouterr().err


def test_cli_formats(capsys):
    assert cli.main(["explain", str(CASES / "iris-mlp.toml"), "--format", "markdown"]) == 0
    assert capsys.readouterr().out.startswith("# derivcheck explain: iris-mlp")
    assert cli.main(["explain", str(CASES / "pde" / "heat-1d.toml"), "--format", "latex"]) == 0
    assert r"\section*{derivcheck explain: heat-1d}" in capsys.readouterr().out


def test_ddpm_case_explains_the_forward_process_and_noise_loss():
    result = explain(load_case(CASES / "diffusion-ddpm-step.toml"))
    assert result.ok, result.failing_steps()
    text = result.to_text()
    for fragment in ("the forward process q(x_t | x_0)", "from three schedules", "sinusoidal time embedding", "noise-prediction loss", "dL/dx0 = sqrt(abar_t)"):
        assert fragment in text
    assert "\\bar\\alpha_t" in result.to_markdown()


def test_score_case_derives_the_score_step_by_step():
    result = explain(load_case(CASES / "score-gaussian-mixture.toml"))
    assert result.ok, result.failing_steps()
    titles = [s.title for s in result.steps]
    assert titles[0] == "The density and its log" and "The score, derived" in titles
    assert any("optimal noise predictor" in t for t in titles) and any("Divergence" in t for t in titles)
    assert "Hutchinson, 256 vectors" in result.to_text()


def test_score_explanation_flags_a_wrong_hand_formula(monkeypatch):
    from derivcheck.kinds.score.engines import numpy_backprop as score_numpy

    def no_inverse(problem, abar, x):
        score, hessian, r, covs = original(problem, abar, x)
        return score * 2.0, hessian, r, covs

    original = score_numpy.mixture_score
    monkeypatch.setattr(score_numpy, "mixture_score", no_inverse)
    result = explain(load_case(CASES / "score-gaussian-mixture.toml"))
    assert not result.ok
    assert "The score, derived" in result.failing_steps()
