"""Derivations of the layer families a course teaches after the MLP, for ``derivcheck
explain``: convolution, pooling, recurrent nets, attention, normalisation -- and dense
layers of any width, shown as one representative unit.

Each family module has one function ``explain_<family>(trace) -> list[Step]`` taking the
:class:`~derivcheck.kinds.network.explain_layers.trace.LayerTrace` of one layer: its input
and output, parameters, and torch's gradients at its output and input. A step states the
lecture's formula, evaluates it in numpy from the layer's input and torch's ``dL/dy``, and
checks it against torch (``retain_grad()`` on the intermediate tensors) and against the
layer's hand-written numpy rule fed the same ``dL/dy`` -- so a wrong rule fails at the
step that uses it, not at every step after it.

:data:`FAMILIES` maps layer kinds to ``"module:function"`` names, imported on use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

_PACKAGE = "derivcheck.kinds.network.explain_layers"

FAMILIES: dict[str, str] = {
    "linear": "dense:explain_linear",
    **{kind: "dense:explain_activation" for kind in ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "softplus", "elu")},
    "conv1d": "conv:explain_conv",
    "conv2d": "conv:explain_conv",
    "max_pool2d": "pooling:explain_pooling",
    "avg_pool2d": "pooling:explain_pooling",
    "rnn": "recurrent:explain_recurrent",
    "gru": "recurrent:explain_recurrent",
    "lstm": "recurrent:explain_recurrent",
    "sdpa": "attention:explain_attention",
    "multihead_attention": "attention:explain_attention",
    "transformer_encoder": "attention:explain_attention",
    "embedding": "attention:explain_embedding",
    "layer_norm": "norm:explain_norm",
    "batch_norm1d": "norm:explain_norm",
    "batch_norm2d": "norm:explain_norm",
}

# the local derivative of each loss: (text, LaTeX), formatted with the output name y and target t
LOSS_RULES: dict[str, tuple[str, str]] = {
    "cross_entropy": ("dL/d{y} = softmax({y}) - {t}  ({t} one-hot)", r"\frac{{\partial L}}{{\partial {y}}} = \operatorname{{softmax}}({y}) - {t}"),
    "mse": ("dL/d{y} = 2 ({y} - {t}) / K", r"\frac{{\partial L}}{{\partial {y}}} = \tfrac{{2}}{{K}}({y} - {t})"),
    "bce": ("dL/d{y} = ({y} - {t}) / ({y} (1 - {y})) / K", r"\frac{{\partial L}}{{\partial {y}}} = \tfrac{{1}}{{K}}\frac{{{y} - {t}}}{{{y}(1-{y})}}"),
    "bce_with_logits": ("dL/d{y} = (sigma({y}) - {t}) / K", r"\frac{{\partial L}}{{\partial {y}}} = \tfrac{{1}}{{K}}(\sigma({y}) - {t})"),
}


def family_explainer(kind: str) -> Callable[[Any], list[Any]] | None:
    """The explainer of layer `kind`, or ``None`` (the layer is then checked in bulk only)."""
    target = FAMILIES.get(kind)
    if target is None:
        return None
    module, function = target.split(":")
    explainer: Callable[[Any], list[Any]] = getattr(importlib.import_module(f"{_PACKAGE}.{module}"), function)
    return explainer
