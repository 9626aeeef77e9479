"""sparse family, pure torch: the kernels of the masked matmul and compressed sparse linears on every device
without a native one (and float64 anywhere), and the tests' oracle.

Semantics (every backend): y[m, n] = sum over the kept / stored entries (n, k) of w[n, k] * x[m, k] + b[n]. A
pruned weight is a structural zero, as in every sparse kernel (MKL, cuSPARSE): an inf or NaN in a column of x
that no kept weight reads does not reach y (a dense matmul with zeros would turn it into NaN). BSR blocks are
stored whole, so inside a stored block a zero weight does multiply. Training (masked): y = x (W*M)^T + b;
grad_x = grad_y (W*M); grad_W = (grad_y^T x) * M (SDDMM, pruned entries exactly 0).
"""

from __future__ import annotations

import math

import torch

from ..._rules import csr_rows, dequantize_csr_int8, masked_weight
from .. import checks as C
from ..backends import reference


def _2d(t: torch.Tensor) -> torch.Tensor:
    """t as [rows, last dim]; not reshape(-1, K), which is ambiguous for an empty t with K == 0."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def stored_product(x2, rows, cols, values, n: int) -> torch.Tensor:
    """[M, n]: y[:, rows[j]] += x2[:, cols[j]] * values[j], over the stored entries j only; accumulated in float64
    (index_add sums in order, so in float32 its error would grow with the row length) and rounded once."""
    acc = torch.zeros(x2.shape[0], n, dtype=torch.float64, device=x2.device)
    return acc.index_add_(1, rows, x2[:, cols].double() * values.double()).to(x2.dtype)


def _with_bias(y, bias, x, n):
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], n)


@reference("sparse_masked_linear")
def masked_linear_ref(x, weight, mask, bias):
    C.check_sparse_masked_linear(x, weight, mask, bias)
    rows, cols = mask.nonzero(as_tuple=True)
    return _with_bias(
        stored_product(_2d(x), rows, cols, weight[rows, cols], weight.shape[0]), bias, x, weight.shape[0]
    )


@reference("sparse_masked_linear_grad_input")
def masked_linear_grad_input_ref(grad_y, weight, mask):
    C.check_sparse_masked_linear_grad_input(grad_y, weight, mask)
    rows, cols = mask.nonzero(as_tuple=True)
    gx = stored_product(_2d(grad_y), cols, rows, weight[rows, cols], weight.shape[1])
    return gx.reshape(*grad_y.shape[:-1], weight.shape[1])


@reference("sparse_masked_sddmm")
def masked_sddmm_ref(grad_y, x, mask):
    C.check_sparse_masked_sddmm(grad_y, x, mask)
    return masked_weight(_2d(grad_y).t() @ _2d(x), mask)


def _check_cols(crow_indices, col_indices, k: int, what: str) -> None:
    """Column indices strictly increasing within each row and in [0, k) (every backend refuses the rest)."""
    col = col_indices.long()
    if col.numel() == 0:
        return
    rows = csr_rows(crow_indices)
    first = torch.ones_like(col, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    increasing = bool((first[1:] | (col[1:] > col[:-1])).all())
    if not (increasing and int(col.min()) >= 0 and int(col.max()) < k):
        raise ValueError(f"col_indices must be in [0, {k}) and strictly increasing within each {what}")


def _check_crow(crow_indices, nnz: int) -> None:
    c = crow_indices
    if not (int(c[0]) == 0 and int(c[-1]) == nnz and bool((c[1:] >= c[:-1]).all())):
        raise ValueError(f"crow_indices must start at 0, never decrease and end at nnz={nnz}")


@reference("sparse_csr_linear")
def csr_linear_ref(x, crow_indices, col_indices, values, bias, out_features):
    C.check_sparse_csr_linear(x, crow_indices, col_indices, values, bias, out_features)
    _check_crow(crow_indices, values.shape[0])
    _check_cols(crow_indices, col_indices, x.shape[-1], "row")
    y = stored_product(_2d(x), csr_rows(crow_indices), col_indices.long(), values, out_features)
    return _with_bias(y, bias, x, out_features)


@reference("sparse_csr_int8_linear")
def csr_int8_linear_ref(x, crow_indices, col_indices, values, row_scales, bias, out_features):
    C.check_sparse_csr_int8_linear(x, crow_indices, col_indices, values, row_scales, bias, out_features)
    _check_crow(crow_indices, values.shape[0])  # before dequantising: csr_rows needs a valid crow_indices
    # dequantise (one float32 rounding per value), then the float CSR reference in float32 (float64 for float64)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = dequantize_csr_int8(crow_indices, values, row_scales).to(dt)
    b = None if bias is None else bias.to(dt)
    return csr_linear_ref(x.to(dt), crow_indices, col_indices, w, b, out_features).to(x.dtype)


@reference("sparse_bsr_linear")
def bsr_linear_ref(x, crow_indices, col_indices, values, bias, out_features):
    C.check_sparse_bsr_linear(x, crow_indices, col_indices, values, bias, out_features)
    nnzb, bh, bw = values.shape
    k = x.shape[-1]
    _check_crow(crow_indices, nnzb)
    _check_cols(crow_indices, col_indices, k // bw, "block row")
    xb = _2d(x).reshape(math.prod(x.shape[:-1]), k // bw, bw)
    # every stored block (I, J): y[:, I*bh:(I+1)*bh] += x[:, J*bw:(J+1)*bw] @ block^T
    prod = torch.einsum("mjb,jhb->mjh", xb[:, col_indices.long()].double(), values.double())
    y = torch.zeros(xb.shape[0], out_features // bh, bh, dtype=torch.float64, device=x.device)
    y = y.index_add_(1, csr_rows(crow_indices), prod).reshape(xb.shape[0], out_features).to(x.dtype)
    return _with_bias(y, bias, x, out_features)
