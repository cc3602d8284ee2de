"""The layer catalog: every layer and loss derivcheck knows, by case-file name."""

from __future__ import annotations

from .activations import ELU, GELU, Identity, LeakyReLU, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Softplus, Tanh
from .attention import MultiheadAttention, ScaledDotProductAttention, TransformerEncoder
from .base import Layer, Loss, Option
from .diffusion import DdpmNoise, TimeEmbedding
from .conv import AvgPool2d, Conv1d, Conv2d, Flatten, MaxPool2d
from .misc import Dropout, Embedding
from .norm import BatchNorm1d, BatchNorm2d, LayerNorm
from .recurrent import GRU, LSTM, RNN
from .linear import Linear
from .losses import BCE, MSE, BCEWithLogits, CrossEntropy

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
