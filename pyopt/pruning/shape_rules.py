"""The shape rules of pyopt's channel tracer (pyopt/pruning/depgraph.py): how views, permutes, concatenations,
splits, slices, pads, reductions, softmax and pooling move channel spaces from their inputs to their outputs.
A mixin of DepGraph: self.sp (Spaces), self.node (the fx node), self.where (its description), and the
helpers fresh / taint / flag / unknown / broadcast come from there.
"""

from __future__ import annotations

import dataclasses
import re

import torch

REDUCE_EXACT = {"sum"}
SPATIAL_OP = re.compile(r"^_?(adaptive_)?(avg|max|lp)_pool(\d)d(_with_indices)?$|^upsample_\w+(\d)d(\.vec)?$")


@dataclasses.dataclass
class T:
    """A traced tensor: one space per dim; act = computed from a model input (not only from parameters)."""

    dims: list
    act: bool


def shape_of(v):
    return tuple(int(s) for s in v.shape) if isinstance(v, torch.Tensor) else None


def prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


class ShapeRules:
    # ------------------------------------------------------------------------------------------ shapes
    def r_view(self, args, kwargs):
        return T(self.reshape(args[0].dims, shape_of(self.node.meta["val"])), args[0].act)

    r__unsafe_view = r_reshape = r_view_copy = r_flatten = r_unflatten = r_squeeze = r_unsqueeze = r_view
    r__reshape_alias = r_view

    def reshape(self, dims: list, out_shape) -> list:
        """Match input and output dims by running products (size-1 dims skipped); each matched run is split
        / merged through the common refinement of both factorisations, if their running products divide
        each other; otherwise the channels are mixed and the spaces tainted."""
        if any(d.size == 0 for d in dims) or 0 in out_shape:
            self.taint([T(dims, True)], "a reshape of an empty tensor")
            return [self.sp.new(n, unsafe=f"{self.where}: empty") for n in out_shape]
        ins = [d for d in dims if d.size != 1]
        outs = [j for j, n in enumerate(out_shape) if n != 1]
        result = [None] * len(out_shape)
        i = j = 0
        while i < len(ins) and j < len(outs):
            gi, gj, pi, pj = [ins[i]], [outs[j]], ins[i].size, out_shape[outs[j]]
            i, j = i + 1, j + 1
            while pi != pj:
                if pi < pj:
                    gi.append(ins[i])
                    pi, i = pi * ins[i].size, i + 1
                else:
                    gj.append(outs[j])
                    pj, j = pj * out_shape[outs[j]], j + 1
            for jj, space in zip(gj, self._regroup(gi, [out_shape[x] for x in gj]), strict=True):
                result[jj] = space
        return [r if r is not None else self.sp.new(n) for r, n in zip(result, out_shape, strict=True)]

    def _regroup(self, ins: list, sizes: list[int]) -> list:
        if len(ins) == 1 and len(sizes) == 1:
            return ins
        cum_in, cum_out, c = [], [], 1
        for d in ins:
            c *= d.size
            cum_in.append(c)
        c = 1
        for n in sizes:
            c *= n
            cum_out.append(c)
        points = sorted(set(cum_in) | set(cum_out))
        if any(b % a for a, b in zip([1] + points[:-1], points, strict=True)):
            self.taint([T(ins, True)], "a reshape that mixes channels")
            return [self.sp.new(n, unsafe=f"{self.where}: a reshape that mixes channels") for n in sizes]
        atoms, lo = [], 1
        for d, hi in zip(ins, cum_in, strict=True):
            factors = [
                b // a
                for a, b in zip(
                    [lo] + [p for p in points if lo < p < hi],
                    [p for p in points if lo < p <= hi],
                    strict=True,
                )
            ]
            parts = self.sp.refine(d, "prod", factors, self.where)
            if parts is None:
                return [self.sp.new(n, unsafe=f"{self.where}: split two different ways") for n in sizes]
            atoms += parts
            lo = hi
        out, k, lo = [], 0, 1
        for hi in cum_out:
            count = len([p for p in points if lo < p <= hi])
            group = atoms[k : k + count]
            k, lo = k + count, hi
            if len(group) == 1:
                out.append(group[0])
            else:
                merged = self.sp.new(prod(self.sp.find(g).size for g in group))
                merged.parts = ("prod", group)
                out.append(merged)
        return out

    def r_permute(self, args, kwargs):
        x, perm = args[0], [p % len(args[0].dims) for p in args[1]]
        return T([x.dims[p] for p in perm], x.act)

    def r_transpose(self, args, kwargs):
        x = args[0]
        dims = list(x.dims)
        if len(dims) >= 2:
            a, b = (args[1] % len(dims), args[2] % len(dims)) if len(args) > 2 else (0, 1)
            dims[a], dims[b] = dims[b], dims[a]
        return T(dims, x.act)

    r_t = r_swapaxes = r_transpose

    def r_expand(self, args, kwargs):
        x, out_shape = args[0], shape_of(self.node.meta["val"])
        off = len(out_shape) - len(x.dims)
        dims = [self.sp.new(n) for n in out_shape[:off]]
        dims += [d if d.size == n else self.sp.new(n) for d, n in zip(x.dims, out_shape[off:], strict=True)]
        return T(dims, x.act)

    r_broadcast_to = r_expand_copy = r_expand

    def r_repeat(self, args, kwargs):
        x, reps = args[0], list(args[1])
        if any(r != 1 and d.size != 1 for r, d in zip(reps[len(reps) - len(x.dims) :], x.dims, strict=True)):
            return self.unknown(args, "repeat copies channels")
        return self.r_expand([x], {})

    def r_cat(self, args, kwargs):
        ts = [t for t in args[0] if not (len(t.dims) == 1 and t.dims[0].size == 0)]
        dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % len(ts[0].dims)
        n = len(ts[0].dims)
        out = []
        for i in range(n):
            if i == dim:
                parts = [t.dims[i] for t in ts if t.dims[i].size > 0]
                if len(parts) == 1:
                    out.append(parts[0])
                else:
                    merged = self.sp.new(sum(p.size for p in parts))
                    merged.parts = ("cat", parts)
                    out.append(merged)
            else:
                for t in ts[1:]:
                    self.sp.unify(ts[0].dims[i], t.dims[i], self.where)
                out.append(ts[0].dims[i])
        return T(out, any(t.act for t in ts))

    r_concat = r_concatenate = r_cat

    def r_stack(self, args, kwargs):
        ts = args[0]
        dim = (args[1] if len(args) > 1 else 0) % (len(ts[0].dims) + 1)
        for t in ts[1:]:
            for a, b in zip(ts[0].dims, t.dims, strict=True):
                self.sp.unify(a, b, self.where)
        new = self.sp.new(len(ts), protected=f"{self.where}: stacked")
        return T(ts[0].dims[:dim] + [new] + ts[0].dims[dim:], any(t.act for t in ts))

    def _split(self, x: T, sizes: list[int], dim: int):
        dim %= len(x.dims)
        if len(set(sizes)) == 1 and len(sizes) > 1:  # equal parts: (n, part), all parts the same channels
            parts = self.sp.refine(x.dims[dim], "prod", [len(sizes), sizes[0]], self.where)
            if parts is not None:
                self.flag(parts[0], "protected", "the number of parts of a split")
                parts = [parts[1]] * len(sizes)
        else:
            parts = self.sp.refine(x.dims[dim], "cat", sizes, self.where) if len(sizes) > 1 else [x.dims[dim]]
        if parts is None:
            return self.unknown([x], "a split of channels split another way")
        return [T(x.dims[:dim] + [p] + x.dims[dim + 1 :], x.act) for p in parts]

    def r_split(self, args, kwargs):
        x, size = args[0], args[1]
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        if isinstance(size, (list, tuple)):
            return self._split(x, list(size), dim)
        total = x.dims[dim % len(x.dims)].size
        return self._split(x, [min(size, total - s) for s in range(0, total, size)], dim)

    def r_split_with_sizes(self, args, kwargs):
        return self._split(args[0], list(args[1]), args[2] if len(args) > 2 else kwargs.get("dim", 0))

    def r_chunk(self, args, kwargs):
        x = args[0]
        dim = args[2] if len(args) > 2 else 0
        return self._split(x, [shape_of(v)[dim % len(x.dims)] for v in self.node.meta["val"]], dim)

    def r_unbind(self, args, kwargs):
        x = args[0]
        dim = (args[1] if len(args) > 1 else 0) % len(x.dims)
        if x.dims[dim].size > 1:
            self.flag(x.dims[dim], "protected", "unbind: one tensor per index")
        return [T(x.dims[:dim] + x.dims[dim + 1 :], x.act) for _ in range(x.dims[dim].size)]

    def r_select(self, args, kwargs):
        x, dim = args[0], args[1] % len(args[0].dims)
        if x.dims[dim].size > 1:
            self.taint([T([x.dims[dim]], x.act)], "selects one channel")
        return T(x.dims[:dim] + x.dims[dim + 1 :], x.act)

    def r_slice(self, args, kwargs):
        x = args[0]
        dim = (args[1] if len(args) > 1 else 0) % len(x.dims)
        start = args[2] if len(args) > 2 and args[2] is not None else 0
        end = args[3] if len(args) > 3 and args[3] is not None else x.dims[dim].size
        step = args[4] if len(args) > 4 else 1
        if start in (0, None) and end >= x.dims[dim].size and step == 1:
            return T(list(x.dims), x.act)
        self.taint([T([x.dims[dim]], x.act)], "slices channels")
        return T(
            x.dims[:dim]
            + [self.sp.new(shape_of(self.node.meta["val"])[dim], unsafe=f"{self.where}: a slice")]
            + x.dims[dim + 1 :],
            x.act,
        )

    r_narrow = r_slice

    def r_constant_pad_nd(self, args, kwargs):
        x, pad = args[0], list(args[1])
        dims = list(x.dims)
        for k in range(len(pad) // 2):
            i = len(dims) - 1 - k
            if pad[2 * k] or pad[2 * k + 1]:
                self.taint([T([dims[i]], x.act)], "pads channels")
                dims[i] = self.sp.new(shape_of(self.node.meta["val"])[i], unsafe=f"{self.where}: padded")
        return T(dims, x.act)

    r_pad = r_constant_pad_nd

    # ------------------------------------------------------------------------------------------ reductions
    def reduce(self, name, args, kwargs):
        x = args[0]
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        if name in ("linalg_vector_norm", "norm"):
            dims = args[2] if len(args) > 2 else kwargs.get("dim")
        if isinstance(dims, int):
            dims = [dims]
        dims = list(range(len(x.dims))) if not dims else [d % len(x.dims) for d in dims]
        if name not in REDUCE_EXACT:
            for d in dims:
                self.flag(x.dims[d], "inexact", f"{name} over these channels")
        meta = self.node.meta.get("val")
        first = meta[0] if isinstance(meta, (tuple, list)) else meta
        out_shape = shape_of(first)
        kept = [d for i, d in enumerate(x.dims) if i not in dims]
        if len(out_shape) == len(x.dims):  # keepdim
            kept = [self.sp.new(1) if i in dims else d for i, d in enumerate(x.dims)]
        out = T(kept, x.act) if len(kept) == len(out_shape) else self.fresh(out_shape, x.act)
        return (
            [out] + [T(list(out.dims), x.act) for _ in meta[1:]] if isinstance(meta, (tuple, list)) else out
        )

    def r_softmax(self, args, kwargs):
        x = args[0]
        self.flag(x.dims[args[1] % len(x.dims)], "inexact", "softmax over these channels")
        return T(list(x.dims), x.act)

    r__softmax = r_log_softmax = r__log_softmax = r_softmax

    def spatial(self, name, args):
        x = args[0]
        m = SPATIAL_OP.match(name)
        k = int(m.group(3) or m.group(5))
        meta = self.node.meta["val"]
        first = meta[0] if isinstance(meta, (tuple, list)) else meta
        sp = [self.sp.new(int(n), protected="a spatial dim") for n in first.shape[len(x.dims) - k :]]
        out = T(x.dims[: len(x.dims) - k] + sp, x.act)
        return [out, T(list(out.dims), False)] if isinstance(meta, (tuple, list)) else out
