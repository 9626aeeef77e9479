"""Int8Embedding / Int8EmbeddingBag: nn.Embedding / nn.EmbeddingBag with an int8 table (inference).

The table is stored as int8 rows with one float32 scale per row (Int8Linear's per-channel rule: symmetric,
scale = max|row| / 127), 4x smaller than float32; a lookup dequantises only the rows it reads
(torch.ops.pyopt.embedding_int8 / embedding_bag_int8, pyopt/ops/reference/embedding.py). Embeddings are lookups, so
this is weight-only int8 whatever pyopt.quantize's mode: there are no activations to quantise.

Outputs are in the float dtype of the layer it replaced (float32, or bf16 / fp16 after `.to(dtype)`); the
scales stay float32. All state is in buffers: state_dict, deepcopy, pyopt.save / load and ONNX export
(Gather + dequantize) work.
"""

from __future__ import annotations

import torch
from torch import nn

from .._rules import FLOAT_DTYPES, quantize_rows_symmetric
from .registry import check_features, check_finite_weight, keep_float32, register_module


def _check_float_layer(module: nn.Module, cls: type) -> None:
    if not isinstance(module, cls):
        raise TypeError(f"expected an nn.{cls.__name__}, got {type(module).__name__}")
    if module.max_norm is not None:  # torch renormalises the looked-up rows *in the table* on every call
        raise ValueError(
            f"max_norm={module.max_norm} renormalises the float table on every lookup: it has no int8 form "
            "(keep the layer in float)"
        )
    check_finite_weight(module.weight)


def _check_padding_idx(padding_idx, num: int):
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, int) or not -num <= padding_idx < num:
        raise ValueError(f"padding_idx must be None or an int in [{-num}, {num}), got {padding_idx!r}")
    return padding_idx % num


class _Int8Table(nn.Module):
    """The int8 table, its scales and the output dtype shared by both layers."""

    def _init_table(self, num_embeddings, embedding_dim, padding_idx, device) -> None:
        self.num_embeddings, self.embedding_dim = check_features(num_embeddings, embedding_dim)
        self.padding_idx = _check_padding_idx(padding_idx, self.num_embeddings)
        shape = (self.num_embeddings, self.embedding_dim)
        self.register_buffer("weight", torch.zeros(shape, dtype=torch.int8, device=device))
        self.register_buffer("weight_scales", torch.ones(shape[0], dtype=torch.float32, device=device))
        self.out_dtype = torch.float32

    def _load_float(self, module: nn.Module) -> None:
        w = module.weight.detach()
        q, scales = quantize_rows_symmetric(w.float() if w.dtype not in FLOAT_DTYPES else w)
        self.weight.copy_(q)
        self.weight_scales.copy_(scales)
        self.out_dtype = w.dtype if w.dtype in FLOAT_DTYPES else torch.float32

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        keep_float32(self, "weight_scales")
        # the output dtype follows the model's precision (.half(), .to(torch.bfloat16), ...): ask `fn` what it
        # makes of a float tensor of the current output dtype
        probe = fn(torch.zeros((), dtype=self.out_dtype))
        if probe.dtype in FLOAT_DTYPES:
            self.out_dtype = probe.dtype
        return out

    def onnx_qdq(self) -> dict:
        """Export spec (pyopt/io/onnx_embedding.py): Gather of the int8 rows and their scales, dequantised."""
        spec = {"weight_q": self.weight, "weight_scale": self.weight_scales, "padding_idx": self.padding_idx}
        if isinstance(self, Int8EmbeddingBag):
            return {
                "kind": "embedding_bag",
                "mode": self.mode,
                "include_last_offset": self.include_last_offset,
                **spec,
            }
        return {"kind": "embedding", **spec}

    def dequantized_weight(self) -> torch.Tensor:
        """The float table weight * scale (for inspection and export; the forward never builds it)."""
        return (self.weight.float() * self.weight_scales[:, None]).to(self.out_dtype)


@register_module
class Int8Embedding(_Int8Table):
    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, device=None):
        super().__init__()
        self._init_table(num_embeddings, embedding_dim, padding_idx, device)

    @classmethod
    def from_float(cls, emb: nn.Embedding) -> Int8Embedding:
        _check_float_layer(emb, nn.Embedding)
        mod = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, emb.weight.device)
        mod._load_float(emb)
        return mod

    def extra_config(self) -> dict:
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> Int8Embedding:
        return cls(**cfg)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.ops.pyopt.embedding_int8(input, self.weight, self.weight_scales, self.out_dtype)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}, int8 rows (weight-only)"


@register_module
class Int8EmbeddingBag(_Int8Table):
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: str = "mean",
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        device=None,
    ):
        super().__init__()
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"mode must be 'sum', 'mean' or 'max', got {mode!r}")
        self.mode, self.include_last_offset = mode, bool(include_last_offset)
        self._init_table(num_embeddings, embedding_dim, padding_idx, device)

    @classmethod
    def from_float(cls, bag: nn.EmbeddingBag) -> Int8EmbeddingBag:
        _check_float_layer(bag, nn.EmbeddingBag)
        mod = cls(
            bag.num_embeddings, bag.embedding_dim, bag.mode, bag.include_last_offset, bag.padding_idx,
            bag.weight.device,
        )  # fmt: skip
        mod._load_float(bag)
        return mod

    def extra_config(self) -> dict:
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "mode": self.mode,
            "include_last_offset": self.include_last_offset,
            "padding_idx": self.padding_idx,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> Int8EmbeddingBag:
        return cls(**cfg)

    def forward(self, input: torch.Tensor, offsets=None, per_sample_weights=None) -> torch.Tensor:
        # nn.EmbeddingBag's input forms: 2-D (bags, n) = fixed-size bags, no offsets; 1-D indices + offsets
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError("offsets must be None when input is 2-D (each row is one bag)")
            bags, n = input.shape
            offsets = torch.arange(0, bags * n, n, dtype=input.dtype, device=input.device) if n else None
            if offsets is None:  # bags of 0 entries
                offsets = torch.zeros(bags, dtype=input.dtype, device=input.device)
            input = input.reshape(-1)
            if per_sample_weights is not None:
                per_sample_weights = per_sample_weights.reshape(-1)
            include_last = False
        elif input.dim() == 1:
            if offsets is None:
                raise ValueError("offsets must be given when input is 1-D")
            include_last = self.include_last_offset
        else:
            raise ValueError(f"input must be 1-D (with offsets) or 2-D, got shape {tuple(input.shape)}")
        return torch.ops.pyopt.embedding_bag_int8(
            input, offsets, self.weight, self.weight_scales, per_sample_weights, self.mode, include_last,
            self.padding_idx, self.out_dtype,
        )  # fmt: skip

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}{pad}, int8 rows (weight-only)"
        )
