"""SparseLinear: a pruned nn.Linear that trains with a masked-matmul kernel and runs compressed.

Training mode ("masked"): parameter `weight` [N, K] with pruned entries exactly 0, buffer `mask` (bool);
forward = torch.ops.pyopt.sparse_masked_linear (backward: grad_input + SDDMM, see pyopt/ops/sparse.py).
The mask is attached to `weight` with set_param_mask, so FusedSGD keeps pruned entries 0. from_dense and
set_mask keep the dense layer's Parameter objects (an optimizer built before pruning keeps training them);
a pruned bias (`bias_mask`) is applied as where(bias_mask, bias, 0). to_dense() gives the nn.Linear back.
Inference (`compress()` / `pyopt.sparsify`): the weight is stored as "csr", "bsr", "2:4" or "dense",
whichever the format choice (pyopt/nn/sparse_format.py) measured fastest — never slower than dense.
"csr_int8" (`quantize_int8()` / `pyopt.quantize`): CSR with an int8 value per kept weight and a float32
scale per output row, y = scale_n * sum_k q[n, k] x[k] + b[n] (weight-only int8: activations stay float).
"""

from __future__ import annotations

import torch
from torch import nn

from .._rules import csr_rows, quantize_csr_values, set_param_mask
from ..ops.checks import check_sparse_mask
from ..ops.native import direct
from . import sparse_format as dispatch
from .registry import check_features, check_input, keep_float32, register_module
from .sparse_conv import MaskedBias, check_mask

_MASKED_LINEAR = direct("sparse_masked_linear")

_COMPRESSED_BUFFERS = ("weight", "crow_indices", "col_indices", "values", "row_scales")
_CSR_LIKE = ("csr", "bsr", "csr_int8")  # formats storing crow_indices / col_indices / values


def _sync_param_mask(module: nn.Module, *_) -> None:
    """Re-attach the mask buffers to their parameters (a module-level function, so the layer pickles)."""
    if module.format == "masked":
        set_param_mask(module.weight, module.mask)
    if module.bias is not None and module.bias_mask is not None:
        set_param_mask(module.bias, module.bias_mask)


@register_module
class SparseLinear(MaskedBias, nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        format: str = "masked",
        block: tuple[int, int] | None = None,
        nnz: int = 0,
        reason: str = "",
        bias_mask: bool = False,
    ) -> None:
        super().__init__()
        if format not in ("masked", *dispatch.FORMATS):
            raise ValueError(f"format must be 'masked' or one of {dispatch.FORMATS}, got {format!r}")
        self.in_features, self.out_features = check_features(in_features, out_features)
        self.format, self.block, self.reason = format, None if block is None else tuple(block), reason
        fk = {"device": device, "dtype": dtype}
        n, k = out_features, in_features
        if format == "masked":
            self.weight = nn.Parameter(torch.empty(n, k, **fk))
            self.register_buffer("mask", torch.ones(n, k, dtype=torch.bool, device=device))
            nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        elif format in ("dense", "2:4"):
            self.register_buffer("weight", torch.empty(n, k, **fk))
        else:
            bh, bw = self.block if format == "bsr" else (1, 1)
            col_dtype = torch.int32 if format == "bsr" or k > torch.iinfo(torch.int16).max else torch.int16
            self.register_buffer("crow_indices", torch.zeros(n // bh + 1, dtype=torch.int64, device=device))
            self.register_buffer("col_indices", torch.zeros(nnz, dtype=col_dtype, device=device))
            shape = (nnz, bh, bw) if format == "bsr" else (nnz,)
            if format == "csr_int8":  # int8 values + one float32 scale per output row
                self.register_buffer("values", torch.zeros(shape, dtype=torch.int8, device=device))
                self.register_buffer("row_scales", torch.ones(n, dtype=torch.float32, device=device))
            else:
                self.register_buffer("values", torch.zeros(shape, **fk))
        self.bias = nn.Parameter(torch.zeros(n, **fk)) if bias else None
        has_bias_mask = bias and bias_mask
        self.register_buffer(
            "bias_mask", torch.ones(n, dtype=torch.bool, device=device) if has_bias_mask else None
        )
        self._semi = None  # the 2:4 weight (torch.sparse semi-structured), rebuilt from `weight` when needed
        _sync_param_mask(self)
        self.register_load_state_dict_post_hook(_sync_param_mask)

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: torch.Tensor) -> SparseLinear:
        """Training-mode layer around linear's own weight and bias Parameter objects (an optimizer built on
        the dense model keeps training them); the pruned weights are zeroed in place."""
        w = linear.weight
        check_sparse_mask(mask, w.shape)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, "meta", w.dtype)
        m.weight, m.bias = w, linear.bias
        m.mask = torch.ones(w.shape, dtype=torch.bool, device=w.device)
        m.set_mask(mask)
        return m.train(linear.training)

    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask in place (re-pruning keeps the Parameter object) and zero the pruned weights."""
        if self.format != "masked":
            raise RuntimeError(
                f"set_mask: the layer is compressed (format={self.format!r}); prune before compress"
            )
        check_mask(mask, self.weight.shape)
        self.mask.copy_(mask)
        with torch.no_grad():
            self.weight.masked_fill_(~self.mask, 0)
        set_param_mask(self.weight, self.mask)

    def to_dense(self) -> nn.Linear:
        """The nn.Linear this layer computes: in the "masked" format it holds the same Parameter objects
        (pruned entries exactly zero); compressed float formats are expanded into a new dense weight.
        "csr_int8" raises ValueError (its weights are int8 now, not the float ones it was pruned from)."""
        if self.format == "csr_int8":
            raise ValueError(
                "to_dense: a csr_int8 layer holds int8 weights; it cannot become a float nn.Linear"
            )
        w = self.weight if self.format == "masked" else self._dense_weight()
        if self.format == "masked":
            with torch.no_grad():
                w.masked_fill_(~self.mask, 0)
            set_param_mask(w, None)
        else:
            w = nn.Parameter(w)
        dense = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        dense.weight, dense.bias = w, self.bias
        if self.bias is not None:
            with torch.no_grad():
                if self.bias_mask is not None:
                    self.bias.masked_fill_(~self.bias_mask, 0)
            set_param_mask(self.bias, None)
        return dense.train(self.training)

    def _dense_weight(self) -> torch.Tensor:
        """The float weight of a compressed layer ("dense", "2:4", "csr", "bsr")."""
        if self.format in ("dense", "2:4"):
            return self.weight.detach().clone()
        bh, bw = self.block if self.format == "bsr" else (1, 1)
        rows, cols = csr_rows(self.crow_indices), self.col_indices.long()
        grid = torch.zeros(
            self.out_features // bh, self.in_features // bw, bh, bw, dtype=self.values.dtype,
            device=self.values.device,
        )  # fmt: skip
        grid[rows, cols] = self.values.reshape(-1, bh, bw)
        return grid.permute(0, 2, 1, 3).reshape(self.out_features, self.in_features)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        keep_float32(self, "row_scales")
        self._semi = None
        _sync_param_mask(self)  # .to()/.cuda() replace the buffer object
        return out

    def _tensors(self) -> dict:
        t = {name: getattr(self, name) for name in _COMPRESSED_BUFFERS if hasattr(self, name)}
        if self.format == "2:4":
            if self._semi is None:
                self._semi = dispatch.semi_structured(self.weight)
            t["semi"] = self._semi
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_features)
        if self.format == "masked":
            return _MASKED_LINEAR(x, self.weight, self.mask, self._masked_bias())
        return dispatch.linear(self.format, self._tensors(), x, self.bias, self.out_features)

    @torch.no_grad()
    def compress(
        self,
        format: str | None = None,
        block=None,
        cache: dispatch.DispatchCache | None = None,
        expected_m=None,
    ):
        """Switch to inference storage. format=None/"auto": the dispatcher's choice, calibrated at
        `expected_m` rows per call (an int or a list; default sparse_format.CALIBRATION_M); or force one of
        "dense", "csr", "bsr" (block=(bh, bw), default the mask's own block shape), "2:4". Returns self."""
        if self.format != "masked":
            raise RuntimeError(f"compress: layer is already compressed (format={self.format!r})")
        weight, mask = self.weight.detach(), self.mask
        ms = dispatch.calibration_ms(expected_m)
        if format in (None, "auto"):
            decision = dispatch.choose(weight, mask, self.bias, cache, ms=ms)
        elif format in dispatch.FORMATS:
            if format == "bsr":
                block = tuple(block) if block is not None else dispatch.detect_block(mask)
                if block is None:
                    raise ValueError(
                        "compress(format='bsr') needs block=(bh, bw): the mask has no block structure"
                    )
            decision = dispatch.Decision(format, f"{format}: forced by compress(format={format!r})", block)
        else:
            raise ValueError(f"format must be None, 'auto' or one of {dispatch.FORMATS}, got {format!r}")
        tensors = dispatch.build(decision.format, weight, mask, decision.block)
        self.sparsity = 1.0 - mask.float().mean().item()
        del self.weight, self.mask
        for name, t in tensors.items():
            self.register_buffer(name, t)
        self.format, self.block, self.reason, self.decision = (
            decision.format,
            decision.block,
            decision.reason,
            decision,
        )
        return self

    @torch.no_grad()
    def quantize_int8(self) -> SparseLinear:
        """Convert to "csr_int8" in place: weight-only int8 CSR, the kept weights' structure unchanged.

        From "csr" (its values quantised), "masked" or "dense" (kept = mask / nonzero weights). Int8Linear's
        per-channel rule: scale_n = max|w[n, :]| / 127 over the kept weights (1.0 for an all-zero row),
        q = clamp(rne(w / scale_n), ±127). "bsr" / "2:4" raise ValueError (no int8 variant). Returns self."""
        if self.format == "csr_int8":
            return self
        if self.format == "csr":
            q, scales = quantize_csr_values(
                self.crow_indices, self.col_indices, self.values, self.in_features
            )
            tensors = {"values": q, "row_scales": scales}
        elif self.format in ("masked", "dense"):
            w = self.weight.detach()
            mask = self.mask if self.format == "masked" else w != 0
            tensors = dispatch.build("csr_int8", w, mask)
            self.sparsity = 1.0 - mask.float().mean().item()
            del self.weight
            if self.format == "masked":
                del self.mask
        else:
            raise ValueError(
                f"quantize_int8: format {self.format!r} has no int8 variant (only csr / masked / dense do)"
            )
        for name, t in tensors.items():
            if name in self._buffers:
                del self._buffers[name]
            self.register_buffer(name, t)
        self._semi = None
        self.format, self.block, self.decision = "csr_int8", None, None  # no longer the dispatcher's choice
        self.reason = "csr_int8: weight-only int8 CSR (int8 value per kept weight, float32 scale per row)"
        return self

    def memory_bytes(self) -> tuple[int, int]:
        """(bytes of the equivalent dense nn.Linear weight, bytes this layer stores for its weight)."""
        if self.format == "csr_int8":  # the float layer it was quantised from: its dtype survives in the bias
            # (without a bias it is unknown and float32 is assumed)
            itemsize = self.bias.element_size() if self.bias is not None else 4
        else:
            itemsize = getattr(self, "values" if self.format in _CSR_LIKE else "weight").element_size()
        dense = self.in_features * self.out_features * itemsize
        own = [self.weight, self.mask] if self.format == "masked" else self._tensors().values()
        return dense, sum(t.numel() * t.element_size() for t in own if t.layout == torch.strided)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The [out, in] weight this layer computes with, as a dense float tensor (zeros where pruned); for
        csr_int8 the int8 values (see onnx_qdq for their scales). For export and inspection."""
        if self.format in ("masked", "dense", "2:4"):
            return self.weight.detach() * (self.mask if self.format == "masked" else 1)
        import warnings

        shape = (self.out_features, self.in_features)
        with warnings.catch_warnings():  # torch's "sparse CSR/BSR support is in beta" notes
            warnings.simplefilter("ignore")
            col = self.col_indices.long()
            if self.format == "bsr":
                t = torch.sparse_bsr_tensor(self.crow_indices, col, self.values, shape, check_invariants=True)
            else:
                t = torch.sparse_csr_tensor(self.crow_indices, col, self.values, shape, check_invariants=True)
            return t.to_dense()

    def onnx_qdq(self):
        """Export spec (pyopt/io/onnx_export.py): csr_int8 as int8 weights with per-row scales (weight-only);
        every other format as the plain nn.Linear it computes (ONNX has no sparse matmul)."""
        if self.format == "csr_int8":
            return {
                "kind": "linear", "weight_q": self.dense_weight(), "weight_scale": self.row_scales,
                "bias": self.bias, "activation": "float",
            }  # fmt: skip
        w = self.dense_weight()
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None, w.device, w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_config(self) -> dict:
        nnz = self.values.shape[0] if self.format in _CSR_LIKE else 0
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "format": self.format,
            "block": None if self.block is None else list(self.block),
            "nnz": nnz,
            "reason": self.reason,
            "bias_mask": self.bias_mask is not None,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> SparseLinear:
        cfg = dict(cfg)
        return cls(cfg.pop("in_features"), cfg.pop("out_features"), cfg.pop("bias"), **cfg)

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        s += f", format={self.format}" + (f", block={self.block}" if self.block else "")
        return s + (f", reason='{self.reason}'" if self.reason else "")
