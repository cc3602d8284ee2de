"""The layer catalog: every layer and loss derivcheck knows, by case-file name."""

from __future__ import annotations

from derivcheck.layers.activations import ELU, GELU, Identity, LeakyReLU, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Softplus, Tanh
from derivcheck.layers.attention import MultiheadAttention, ScaledDotProductAttention, TransformerEncoder
from derivcheck.layers.base import Layer, Loss, Option
from derivcheck.layers.diffusion import DdpmNoise, TimeEmbedding
from derivcheck.layers.conv import AvgPool2d, Conv1d, Conv2d, Flatten, MaxPool2d
from derivcheck.layers.misc import Dropout, Embedding
from derivcheck.layers.norm import BatchNorm1d, BatchNorm2d, LayerNorm
from derivcheck.layers.recurrent import GRU, LSTM, RNN
from derivcheck.layers.linear import Linear
from derivcheck.layers.losses import BCE, MSE, BCEWithLogits, CrossEntropy

LAYERS: dict[str, type[Layer]] = {
    cls.kind: cls
    for cls in (
        Linear,
        ReLU,
        LeakyReLU,
        Sigmoid,
        Tanh,
        Softmax,
        LogSoftmax,
        Identity,
        GELU,
        SiLU,
        Softplus,
        ELU,
        Conv1d,
        Conv2d,
        MaxPool2d,
        AvgPool2d,
        Flatten,
        RNN,
        LSTM,
        GRU,
        LayerNorm,
        BatchNorm1d,
        BatchNorm2d,
        Dropout,
        Embedding,
        ScaledDotProductAttention,
        MultiheadAttention,
        TransformerEncoder,
        DdpmNoise,
        TimeEmbedding,
    )
}
"""Layer classes by the name used in case files (``layer = "linear"``)."""

LOSSES: dict[str, type[Loss]] = {cls.kind: cls for cls in (CrossEntropy, MSE, BCE, BCEWithLogits)}
"""Loss classes by the name used in case files (``loss = "cross_entropy"``)."""

__all__ = ["LAYERS", "LOSSES", "Layer", "Loss", "Option"]
