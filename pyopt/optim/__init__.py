"""Optimizers built on pyopt's fused kernels."""

from .fused_sgd import FusedSGD

__all__ = ["FusedSGD"]
