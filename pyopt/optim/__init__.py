"""Optimizers built on pyopt's fused kernels."""

from .sgd import FusedSGD

__all__ = ["FusedSGD"]
