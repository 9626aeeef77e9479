"""int8 linear ops on Triton (kernels/int8_linear.py): the CUDA kernel where Triton measured faster
(pyopt/ops/backends.py), and CPU tensors under TRITON_INTERPRET=1 when forced (tests)."""

from __future__ import annotations

import math

from .. import checks as C
from ..backends import triton


def _operands(x, w_q, w_scales, bias):
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]).contiguous()
    return rows, w_q.contiguous(), w_scales.contiguous(), None if bias is None else bias.float().contiguous()


@triton("int8_linear_dynamic")
def int8_linear_dynamic_triton(x, w_q, w_scales, bias):
    C.check_int8_linear(x, w_q, w_scales, bias)
    from ...kernels import int8_linear as k

    return k.int8_linear_dynamic(*_operands(x, w_q, w_scales, bias)).reshape(*x.shape[:-1], w_q.shape[0])


@triton("int8_linear_weight_only")
def int8_linear_weight_only_triton(x, w_q, w_scales, bias):
    C.check_int8_linear(x, w_q, w_scales, bias)
    from ...kernels import int8_linear as k

    return k.int8_linear_weight_only(*_operands(x, w_q, w_scales, bias)).reshape(*x.shape[:-1], w_q.shape[0])
