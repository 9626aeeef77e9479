"""ONNX export of Int8Embedding / Int8EmbeddingBag (used by pyopt/io/onnx_export.py).

Embedding:  Gather(int8 table, indices) -> Cast(float) * Unsqueeze(Gather(row scales, indices), -1): only the
            rows read are dequantised, the table stays int8 in the file, as in pyopt.
EmbeddingBag, 2-D input (bags, n): the gathered rows (bags, n, dim) reduced over n — ReduceSum (x per-sample
            weights) / ReduceSum / count (mean) / ReduceMax — entries equal to padding_idx masked out, empty
            bags 0, as torch.
EmbeddingBag, 1-D input + offsets: the bag of each index is the number of offsets <= its position, minus 1;
            a (bags, n) membership matrix then reduces the gathered rows (MatMul for sum / mean, a masked
            ReduceMax for max). Standard opset-13 operators only, every size dynamic.
"""

from __future__ import annotations

import torch
from torch import nn


def _const(g, value, dtype=None):
    return g.op("Constant", value_t=torch.as_tensor(value, dtype=dtype))


def _rows(g, idx, weight_q, scale):
    """float32 rows of the int8 table at idx: idx.shape + (dim,)."""
    q = g.op("Cast", g.op("Gather", weight_q, idx, axis_i=0), to_i=1)  # 1 = FLOAT
    s = g.op("Unsqueeze", g.op("Gather", scale, idx, axis_i=0), _const(g, [-1]))
    return g.op("Mul", q, s)


def _valid(g, idx, padding_idx):
    """float 1 / 0: entries that count (not padding_idx)."""
    if padding_idx is None:
        return g.op("Cast", g.op("Equal", idx, idx), to_i=1)
    return g.op("Cast", g.op("Not", g.op("Equal", idx, _const(g, padding_idx, torch.int64))), to_i=1)


def _dequantized(weight_q, scale):
    return weight_q.float() * scale[:, None]


class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, weight_q, scale):
        return nn.functional.embedding(idx, _dequantized(weight_q, scale))

    @staticmethod
    def symbolic(g, idx, weight_q, scale):
        return _rows(g, g.op("Cast", idx, to_i=7), weight_q, scale)  # 7 = INT64


class _Bag2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, psw, weight_q, scale, mode, padding_idx):
        return nn.functional.embedding_bag(
            idx, _dequantized(weight_q, scale), mode=mode, per_sample_weights=psw, padding_idx=padding_idx
        )

    @staticmethod
    def symbolic(g, idx, psw, weight_q, scale, mode, padding_idx):
        idx = g.op("Cast", idx, to_i=7)
        rows = _rows(g, idx, weight_q, scale)  # (bags, n, dim)
        valid = g.op("Unsqueeze", _valid(g, idx, padding_idx), _const(g, [-1]))  # (bags, n, 1)
        count = g.op("ReduceSum", valid, _const(g, [1]), keepdims_i=0)  # (bags, 1)
        if mode == "max":
            neg = g.op("Where", g.op("Cast", valid, to_i=9), rows, _const(g, float("-inf")))  # 9 = BOOL
            out = g.op("ReduceMax", neg, axes_i=[1], keepdims_i=0)
            return g.op("Where", g.op("Equal", count, _const(g, 0.0)), _const(g, 0.0), out)
        weights = valid
        if psw is not None and not psw.node().mustBeNone():
            weights = g.op("Mul", valid, g.op("Unsqueeze", psw, _const(g, [-1])))
        out = g.op("ReduceSum", g.op("Mul", rows, weights), _const(g, [1]), keepdims_i=0)
        if mode == "mean":
            out = g.op("Div", out, g.op("Max", count, _const(g, 1.0)))
        return out


class _Bag1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, offsets, psw, weight_q, scale, mode, include_last_offset, padding_idx):
        return nn.functional.embedding_bag(
            idx, _dequantized(weight_q, scale), offsets, mode=mode, per_sample_weights=psw,
            include_last_offset=include_last_offset, padding_idx=padding_idx,
        )  # fmt: skip

    @staticmethod
    def symbolic(g, idx, offsets, psw, weight_q, scale, mode, include_last_offset, padding_idx):
        idx, offsets = g.op("Cast", idx, to_i=7), g.op("Cast", offsets, to_i=7)
        if include_last_offset:  # bags are delimited by offsets[:-1]; the last one is len(idx)
            offsets = g.op("Slice", offsets, _const(g, [0]), _const(g, [-1]))
        n = g.op("Shape", idx)
        bags = g.op("Shape", offsets)
        pos = g.op(
            "Range", _const(g, 0, torch.int64), g.op("Squeeze", n, _const(g, [0])), _const(g, 1, torch.int64)
        )
        # bag of position i = #(offsets <= i) - 1  (offsets are sorted, offsets[0] = 0)
        le = g.op("Cast", g.op("Not", g.op("Less", g.op("Unsqueeze", pos, _const(g, [1])), offsets)), to_i=7)
        seg = g.op("Sub", g.op("ReduceSum", le, _const(g, [1]), keepdims_i=0), _const(g, 1, torch.int64))
        bag_ids = g.op(
            "Range",
            _const(g, 0, torch.int64),
            g.op("Squeeze", bags, _const(g, [0])),
            _const(g, 1, torch.int64),
        )
        member = g.op(
            "Equal", g.op("Unsqueeze", bag_ids, _const(g, [1])), g.op("Unsqueeze", seg, _const(g, [0]))
        )
        member = g.op(
            "Mul",
            g.op("Cast", member, to_i=1),
            g.op("Unsqueeze", _valid(g, idx, padding_idx), _const(g, [0])),
        )
        rows = _rows(g, idx, weight_q, scale)  # (n, dim)
        count = g.op("ReduceSum", member, _const(g, [1]), keepdims_i=1)  # (bags, 1)
        if mode == "max":
            m3 = g.op("Cast", g.op("Unsqueeze", member, _const(g, [2])), to_i=9)  # (bags, n, 1)
            neg = g.op("Where", m3, g.op("Unsqueeze", rows, _const(g, [0])), _const(g, float("-inf")))
            out = g.op("ReduceMax", neg, axes_i=[1], keepdims_i=0)
            return g.op("Where", g.op("Equal", count, _const(g, 0.0)), _const(g, 0.0), out)
        if psw is not None and not psw.node().mustBeNone():
            member = g.op("Mul", member, g.op("Unsqueeze", psw, _const(g, [0])))
        out = g.op("MatMul", member, rows)
        if mode == "mean":
            out = g.op("Div", out, g.op("Max", count, _const(g, 1.0)))
        return out


class EmbeddingTwin(nn.Module):
    """The export twin of Int8Embedding / Int8EmbeddingBag (its buffers become the graph's initializers)."""

    def __init__(self, spec: dict):
        super().__init__()
        self.kind = spec["kind"]
        self.register_buffer("weight_q", spec["weight_q"].detach().cpu().to(torch.int8).contiguous())
        self.register_buffer("weight_scale", spec["weight_scale"].detach().cpu().float().contiguous())
        self.padding_idx = spec.get("padding_idx")
        self.mode = spec.get("mode", "mean")
        self.include_last_offset = bool(spec.get("include_last_offset", False))

    def forward(self, input, offsets=None, per_sample_weights=None):
        if self.kind == "embedding":
            return _Embedding.apply(input, self.weight_q, self.weight_scale)
        psw = None if per_sample_weights is None else per_sample_weights.float()
        if input.dim() == 2:
            return _Bag2d.apply(input, psw, self.weight_q, self.weight_scale, self.mode, self.padding_idx)
        return _Bag1d.apply(
            input, offsets, psw, self.weight_q, self.weight_scale, self.mode, self.include_last_offset,
            self.padding_idx,
        )  # fmt: skip
