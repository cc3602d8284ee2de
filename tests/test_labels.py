"""Labels users read: public torch names, LaTeX of SymPy's local symbols, paths."""

from __future__ import annotations

import functools

import pytest
import torch

from derivcheck import cli
from derivcheck.check.torch_call import describe
from helpers import CASES


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x**3


@pytest.mark.parametrize(
    ("fn", "name"),
    [
        (torch.tanh, "torch.tanh"),
        (functools.partial(torch.tanh), "torch.tanh"),
        (torch.Tensor.tanh, "torch.Tensor.tanh"),
        (torch.nn.functional.softplus, "torch.nn.functional.softplus"),
        (torch.special.expit, "torch.special.expit"),
        (torch.linalg.norm, "torch.linalg.norm"),
        (torch.fft.fft, "torch.fft.fft"),
        (Cube.apply, "Cube.apply"),
        (functools.partial(Cube.apply), "Cube.apply"),
        (torch.nn.Linear(2, 2), "Linear"),
    ],
)
def test_functions_are_named_as_users_write_them(fn, name):
    assert describe(fn) == name


def test_the_second_derivative_is_labelled_readably():
    import derivcheck as dc

    result = dc.check_torch(torch.sin, torch.linspace(0.1, 1, 3, dtype=torch.float64), order=2)
    assert [q.verdict for q in result.quantities if q.name == "second derivative u^T H v of sum(w*out)"] == ["agree"]


def test_explain_latex_names_the_layer_matrix(capsys):
    assert cli.main(["explain", str(CASES / "iris-mlp.toml"), "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert "weight_{" not in out and r"\partial x[0]} = W_{1}[0, 0]" in out


def test_report_folder_with_a_trailing_slash_prints_one_slash(tmp_path, capsys):
    target = str(tmp_path / "out") + "/"
    assert cli.main(["report", str(CASES / "tanh-regression.toml"), "-o", target, "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert f"to {tmp_path / 'out'}/: " in out and "//" not in out.replace("://", "")
