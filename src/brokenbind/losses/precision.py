"""Losses run in fp32 even inside bf16/fp16 autocast: ``.float()`` alone does not stop autocast from casting matmul
inputs back down, and log-sum-exp, squared cosines and pseudo-inverses lose too much in half precision."""

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable)


def fp32(fn: F) -> F:
    """Run ``fn`` with autocast disabled on the device of its first tensor argument, inputs cast to fp32 by ``fn``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper
