"""SparseEmbedding: an nn.Embedding whose table is multiplied by a fixed bool mask (what pyopt.prune makes of
nn.Embedding). The same contract as SparseConv2d: `weight` holds the pruned table itself (zeros where pruned,
the dense layer's Parameter object), `mask` is a bool buffer attached with set_param_mask, and the forward
looks rows up in `where(mask, weight, 0)` so pruned entries get exactly zero gradient.

max_norm: like nn.Embedding, the looked-up rows of `weight` are renormalised in place before the lookup
(torch.embedding_renorm_, which is what F.embedding does to the table it is given); scaling keeps zeros zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._rules import get_param_mask, set_param_mask
from .registry import register_module
from .sparse_conv import check_mask


def _sync_mask(module: nn.Module, *_) -> None:
    set_param_mask(module.weight, module.mask)


@register_module
class SparseEmbedding(nn.Module):
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        spec = nn.Embedding(
            num_embeddings,
            embedding_dim,
            padding_idx,
            max_norm,
            norm_type,
            scale_grad_by_freq,
            sparse,
            device="meta",
        )  # fmt: skip  (validates the arguments and normalises padding_idx as nn.Embedding does)
        for attr in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type"):
            setattr(self, attr, getattr(spec, attr))
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        self.weight = nn.Parameter(torch.zeros(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self.register_buffer(
            "mask", torch.ones(num_embeddings, embedding_dim, dtype=torch.bool, device=device)
        )
        self.compressed = False
        _sync_mask(self)
        self.register_load_state_dict_post_hook(_sync_mask)

    @classmethod
    def from_dense(cls, embedding: nn.Embedding, mask: torch.Tensor) -> SparseEmbedding:
        """Wrap `embedding` with a bool `mask` of its weight's shape; reuses its weight Parameter object."""
        if type(embedding) is not nn.Embedding:
            raise TypeError(f"embedding must be an nn.Embedding, got {type(embedding).__name__}")
        e = embedding
        layer = cls(
            e.num_embeddings, e.embedding_dim, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq,
            e.sparse, device="meta",
        )  # fmt: skip
        layer.weight = e.weight
        layer.mask = torch.ones(e.weight.shape, dtype=torch.bool, device=e.weight.device)
        layer.set_mask(mask)
        return layer.train(e.training)

    def set_mask(self, mask: torch.Tensor) -> None:
        check_mask(mask, self.weight.shape)
        self.mask.copy_(mask)
        with torch.no_grad():
            self.weight.masked_fill_(~self.mask, 0)
        set_param_mask(self.weight, self.mask)

    def to_dense(self) -> nn.Embedding:
        """The nn.Embedding holding the same Parameter object (pruned entries exactly zero), no mask."""
        self.compress()
        dense = nn.Embedding(
            self.num_embeddings, self.embedding_dim, self.padding_idx, self.max_norm, self.norm_type,
            self.scale_grad_by_freq, self.sparse, device="meta",
        )  # fmt: skip
        dense.weight = self.weight
        set_param_mask(self.weight, None)
        return dense.train(self.training)

    def compress(self) -> SparseEmbedding:
        """Inference: look rows up in the (zero where pruned) table directly."""
        with torch.no_grad():
            self.weight.masked_fill_(~self.mask, 0)
        self.compressed = True
        return self

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        _sync_mask(self)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if get_param_mask(self.weight) is not self.mask:
            set_param_mask(self.weight, self.mask)
        if self.max_norm is not None:
            with torch.no_grad():
                torch.embedding_renorm_(self.weight, x.detach().reshape(-1), self.max_norm, self.norm_type)
        weight = self.weight if self.compressed else torch.where(self.mask, self.weight, 0)
        return F.embedding(x, weight, self.padding_idx, None, 2.0, self.scale_grad_by_freq, self.sparse)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.mask.sum().item() / max(self.mask.numel(), 1)

    def extra_config(self) -> dict:
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            "max_norm": self.max_norm,
            "norm_type": self.norm_type,
            "scale_grad_by_freq": self.scale_grad_by_freq,
            "sparse": self.sparse,
            "dtype": str(self.weight.dtype).removeprefix("torch."),
            "compressed": self.compressed,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> SparseEmbedding:
        cfg = dict(cfg)
        dtype = getattr(torch, cfg.pop("dtype", "float32"))
        compressed = cfg.pop("compressed", False)
        layer = cls(**cfg, dtype=dtype)
        layer.compressed = compressed
        return layer

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, sparsity={self.sparsity:.3f}"
