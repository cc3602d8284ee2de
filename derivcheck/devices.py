"""Devices for the torch-based engines (shared by them; not an engine itself)."""

from __future__ import annotations

from derivcheck.errors import InvalidArgument

DEVICES = ("cpu", "cuda")


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def validate_device(device: str) -> str:
    """`device` if usable; :class:`~derivcheck.errors.InvalidArgument` naming what was found
    otherwise (an unknown name, or CUDA without a GPU)."""
    if device not in DEVICES:
        raise InvalidArgument(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not cuda_available():
        raise InvalidArgument("device 'cuda' was requested but torch.cuda.is_available() is False on this machine; use --device cpu")
    return device
