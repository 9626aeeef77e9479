"""The dependency graph of channel pruning: which parameter dimensions must lose the same channels.

The model is traced with torch.export (ATen-level graph, parameters and buffers as named inputs); every
tensor dimension becomes a channel space (pyopt/pruning/spaces.py) and each op couples its operands' spaces
by its own semantics, e.g.
    linear(x, W, b)        x[-1] ~ W[1];  out[-1] = W[0] ~ b[0]   (W[0]: a *producer* of channels)
    conv(x, W, groups=g)   x[C] = (g, C/g), W[0] = (g, O/g): the groups coupled; depthwise: x[C] ~ W[0]
    add / mul / where      broadcast dims unified: the residual add of a ResNet block ties its channels
    batch_norm             x[C] ~ weight ~ bias ~ running stats (exact: per channel)
    layer_norm / softmax / mean over a dim    the dim is coupled and *inexact* (renormalised)
    view / reshape         dims split / merged: (B, T, 768) -> (B, T, 12, 64) refines 768 into 12 x 64
    cat / split            the dim is the concatenation of the parts
    sdpa, matmul of two activations  (attention): batch dims (the heads) unified and marked `heads`;
                           head_dim, query and key positions protected: whole heads only
Anything else an op does to a dimension it does not understand (an unknown op, a slice of channels, an
index) marks the spaces it touches unsafe; pruning such a group is an error naming the module and op.
Groups are the leaf spaces that hold at least one producer (a Linear/Conv output dim, an Embedding dim).
"""

from __future__ import annotations

import dataclasses
import operator
import re

import torch
from torch import nn

from .spaces import Spaces

_UNARY = {
    "dropout", "alpha_dropout", "feature_dropout", "native_dropout", "clone", "contiguous", "detach", "alias",
    "_to_copy", "to", "type_as", "lift_fresh_copy", "hardswish", "hardsigmoid", "relu6", "mish", "elu",
    "zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "copy", "gelu", "silu",
    "logit", "log_sigmoid_forward", "glu_never", "fill", "bernoulli", "__and__", "__or__", "__xor__",
    "__invert__", "bitwise_and", "bitwise_or", "logical_and", "logical_or", "masked_fill", "where",
    "_assert_tensor_metadata_passthrough",
}  # fmt: skip
_CREATE = {
    "arange", "zeros", "ones", "full", "empty", "scalar_tensor", "new_zeros", "new_ones", "new_full",
    "new_empty", "rand", "randn", "randint", "tensor", "empty_strided", "eye", "linspace", "_local_scalar_dense",
}  # fmt: skip
_IGNORE = {"_assert_tensor_metadata", "_assert_async", "sym_size", "sym_numel", "sym_stride", "sym_storage_offset",
           "_assert_scalar", "sym_constrain_range", "sym_constrain_range_for_size", "_print"}  # fmt: skip
_BATCH_NORMS = {"batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
                "native_batch_norm", "_batch_norm_with_update", "cudnn_batch_norm", "instance_norm"}  # fmt: skip
_REDUCE_EXACT = {"sum"}
_REDUCE = {"sum", "mean", "amax", "amin", "max", "min", "var", "std", "var_mean", "std_mean", "logsumexp",
           "prod", "argmax", "argmin", "any", "all", "linalg_vector_norm", "norm", "nansum", "nanmean"}  # fmt: skip
_SPATIAL = re.compile(r"^_?(adaptive_)?(avg|max|lp)_pool(\d)d(_with_indices)?$|^upsample_\w+(\d)d(\.vec)?$")


@dataclasses.dataclass
class T:
    """A traced tensor: one space per dim; act = computed from a model input (not only from parameters)."""

    dims: list
    act: bool


@dataclasses.dataclass
class Member:
    fqn: str  # qualified name of a parameter or buffer
    dim: int
    space: object


@dataclasses.dataclass
class Producer:
    module: str  # the layer whose output channels these are
    fqn: str
    space: object


@dataclasses.dataclass
class Record:
    """A module attribute that follows the pruning: kind "groups" (conv groups = |space|), "shape" (a tuple
    of sizes, e.g. a LayerNorm's normalized_shape) or "heads" (an attention module's head count)."""

    module: str
    kind: str
    spaces: list
    extra: int = 0


def _module_of(node) -> tuple[str, str]:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, typ = list(stack.values())[-1]
    return re.sub(r"@\d+$", "", str(path)), str(typ).rsplit(".", 1)[-1]


def _shape(v):
    return tuple(int(s) for s in v.shape) if isinstance(v, torch.Tensor) else None


class DepGraph:
    """Walks an ExportedProgram once and collects spaces, members, producers and attribute records."""

    def __init__(self, model: nn.Module, ep):
        self.model, self.ep, self.sp = model, ep, Spaces()
        self.members: list[Member] = []
        self.producers: list[Producer] = []
        self.records: list[Record] = []
        self.env: dict = {}
        sig = ep.graph_signature
        self.inputs = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
        self.outputs = [s for s in sig.output_specs if s.kind.name == "USER_OUTPUT"]
        for node in ep.graph.nodes:
            self.node = node
            self.where = self._where(node)
            self.env[node] = self._visit(node)
        self.sp.propagate_flags()

    # ------------------------------------------------------------------------------------------ helpers
    def _where(self, node) -> str:
        path, typ = _module_of(node)
        op = node.target._opname if hasattr(node.target, "_opname") else getattr(node.target, "__name__", "")
        return f"{op} in '{path}' ({typ})" if path else f"{op} (top-level forward)"

    def val(self, a):
        if isinstance(a, torch.fx.Node):
            return self.env.get(a)
        if isinstance(a, (list, tuple)):
            return [self.val(x) for x in a]
        return a

    def fresh(self, shape, act=True, **flags) -> T:
        return T([self.sp.new(n, **flags) for n in shape], act)

    def fresh_out(self, act=True, **flags):
        v = self.node.meta.get("val")
        if isinstance(v, (tuple, list)):
            return [self.fresh(_shape(x), act, **flags) if _shape(x) is not None else None for x in v]
        return self.fresh(_shape(v), act, **flags) if _shape(v) is not None else None

    def tensors(self, args) -> list[T]:
        out = []
        for a in args:
            if isinstance(a, T):
                out.append(a)
            elif isinstance(a, (list, tuple)):
                out += self.tensors(a)
        return out

    def taint(self, ts, reason: str) -> None:
        for t in ts:
            for d in t.dims:
                if d.size > 1:
                    self.sp.taint(d, f"{self.where}: {reason}")

    def flag(self, d, flag: str, reason: str) -> None:
        self.sp.flag(d, flag, f"{self.where}: {reason}")

    def broadcast(self, ts: list[T], shape) -> list:
        out = []
        for i, n in enumerate(shape):
            k = len(shape) - i
            cands = [
                t.dims[len(t.dims) - k] for t in ts if len(t.dims) >= k and t.dims[len(t.dims) - k].size == n
            ]
            for c in cands[1:]:
                self.sp.unify(cands[0], c, self.where)
            out.append(cands[0] if cands else self.sp.new(n))
        return out

    def unknown(self, args, reason: str):
        ins = self.tensors(args)
        self.taint(ins, reason)
        out = self.fresh_out(any(t.act for t in ins))
        self.taint(self.tensors([out]), reason)
        return out

    # ------------------------------------------------------------------------------------------ nodes
    def _visit(self, node):
        if node.op == "placeholder":
            return self._placeholder(node)
        if node.op == "output":
            for spec in self.outputs:
                t = self.env.get(self._node_named(spec.arg.name))
                for d in t.dims if isinstance(t, T) else ():
                    self.sp.flag(d, "protected", "a model output")
            return None
        if node.op != "call_function":
            return self.unknown(self.val(list(node.args)), f"graph node {node.op} is not followed")
        args, kwargs = self.val(list(node.args)), {k: self.val(v) for k, v in node.kwargs.items()}
        if node.target is operator.getitem:
            return args[0][args[1]] if isinstance(args[0], (list, tuple)) else None
        if not isinstance(node.target, torch._ops.OpOverload):
            return self.unknown(args, f"{node.target} is not an ATen op")
        path, typ = _module_of(node)
        if typ == "MultiheadAttention":
            return self.unknown(
                args,
                "nn.MultiheadAttention checks embed_dim == num_heads * head_dim, its widths cannot change",
            )
        name = node.target._opname
        rule = getattr(self, f"r_{name}", None)
        if rule is not None:
            return rule(args, kwargs)
        if name in _IGNORE:
            return None
        if name in _CREATE:
            return self.fresh_out(act=False)
        if name in _BATCH_NORMS:
            return self.batch_norm(args)
        if name in _REDUCE:
            return self.reduce(name, args, kwargs)
        if _SPATIAL.match(name):
            return self.spatial(name, args)
        if name in _UNARY or torch.Tag.pointwise in node.target.tags:
            return self.pointwise(args)
        return self.unknown(args, f"aten.{name} is not known to pyopt's channel tracer")

    def _node_named(self, name):
        return next(n for n in self.ep.graph.nodes if n.name == name)

    def _placeholder(self, node):
        shape = _shape(node.meta.get("val"))
        if shape is None:
            return None
        spec = self.inputs.get(node.name)
        kind = spec.kind.name if spec is not None else "USER_INPUT"
        if kind in ("PARAMETER", "BUFFER"):
            t = self.fresh(shape, act=False)
            self.members += [Member(spec.target, i, d) for i, d in enumerate(t.dims)]
            return t
        if kind == "USER_INPUT":
            return self.fresh(shape, act=True, protected="a model input")
        t = self.fresh(shape, act=False)
        self.taint([t], f"tensor constant {spec.target!r} cannot be resized")
        return t

    def pointwise(self, args):
        ins = self.tensors(args)
        out_shape = _shape(self.node.meta.get("val"))
        if out_shape is None:
            v = self.node.meta.get("val")
            if isinstance(v, (tuple, list)) and ins:  # native_dropout: (out, mask)
                out = self.broadcast(ins, _shape(v[0]))
                return [T(out, any(t.act for t in ins))] + [T(list(out), False) for _ in v[1:]]
            return None
        return T(self.broadcast(ins, out_shape), any(t.act for t in ins))

    # ------------------------------------------------------------------------------------------ layers
    def r_linear(self, args, kwargs):
        x, w = args[0], args[1]
        b = args[2] if len(args) > 2 else kwargs.get("bias")
        self.sp.unify(x.dims[-1], w.dims[1], self.where)
        if isinstance(b, T):
            self.sp.unify(b.dims[0], w.dims[0], self.where)
        self._produce(w, 0)
        return T(x.dims[:-1] + [w.dims[0]], x.act or w.act)

    def _produce(self, w: T, dim: int):
        fqn = self._param_name(
            self.node.args[1] if self.node.target._opname != "embedding" else self.node.args[0]
        )
        self.producers.append(Producer(_module_of(self.node)[0], fqn, w.dims[dim]))

    def _param_name(self, arg) -> str:
        spec = self.inputs.get(arg.name) if isinstance(arg, torch.fx.Node) else None
        return spec.target if spec is not None and spec.kind.name in ("PARAMETER", "BUFFER") else ""

    def r_conv1d(self, args, kwargs):
        return self._conv(
            args[0], args[1], args[2] if len(args) > 2 else None, args[6] if len(args) > 6 else 1
        )

    r_conv2d = r_conv3d = r_conv1d

    def r_convolution(self, args, kwargs):
        if args[6]:  # transposed
            return self._conv_transpose(args[0], args[1], args[2], args[8])
        return self._conv(args[0], args[1], args[2], args[8])

    def r_conv_transpose1d(self, args, kwargs):
        return self._conv_transpose(args[0], args[1], args[2] if len(args) > 2 else None,
                                    args[6] if len(args) > 6 else 1)  # fmt: skip

    r_conv_transpose2d = r_conv_transpose3d = r_conv_transpose1d

    def _conv(self, x: T, w: T, b, groups: int):
        ch = len(x.dims) - (len(w.dims) - 2) - 1
        cin, cout, g = x.dims[ch].size, w.dims[0].size, int(groups)
        if g == 1:
            self.sp.unify(x.dims[ch], w.dims[1], self.where)
        else:  # input channels (g, cin/g), output channels (g, cout/g): the group index is shared
            xs = self.sp.refine(x.dims[ch], "prod", [n for n in (g, cin // g) if n > 1], self.where)
            ws = self.sp.refine(w.dims[0], "prod", [n for n in (g, cout // g) if n > 1], self.where)
            if xs is None or ws is None:
                return self.unknown([x, w, b], "grouped conv over channels split another way")
            self.sp.unify(xs[0], ws[0], self.where)
            if cin // g > 1:  # a grouped conv keeps its group count; channels go within every group alike
                self.sp.unify(xs[1], w.dims[1], self.where)
                self.flag(xs[0], "protected", "the group count of a grouped conv")
            if cout // g > 1 and cin // g == 1:
                self.flag(ws[1], "protected", "the channel multiplier of a depthwise conv")
            self.records.append(Record(_module_of(self.node)[0], "groups", [xs[0]]))
        if isinstance(b, T):
            self.sp.unify(b.dims[0], w.dims[0], self.where)
        self._produce(w, 0)
        spatial = self.node.meta["val"].shape[ch + 1 :]
        sp = [self.sp.new(int(n), protected="a spatial dim") for n in spatial]
        return T(x.dims[:ch] + [w.dims[0]] + sp, x.act or w.act)

    def _conv_transpose(self, x: T, w: T, b, groups: int):
        if int(groups) != 1:
            return self.unknown([x, w, b], "grouped transposed convs are not followed")
        ch = len(x.dims) - (len(w.dims) - 2) - 1
        self.sp.unify(x.dims[ch], w.dims[0], self.where)
        if isinstance(b, T):
            self.sp.unify(b.dims[0], w.dims[1], self.where)
        self.producers.append(
            Producer(_module_of(self.node)[0], self._param_name(self.node.args[1]), w.dims[1])
        )
        spatial = self.node.meta["val"].shape[ch + 1 :]
        sp = [self.sp.new(int(n), protected="a spatial dim") for n in spatial]
        return T(x.dims[:ch] + [w.dims[1]] + sp, x.act or w.act)

    def batch_norm(self, args):
        x = args[0]
        for t in args[1:5]:
            if isinstance(t, T):
                self.sp.unify(x.dims[1], t.dims[0], self.where)
        out = T(list(x.dims), x.act)
        v = self.node.meta.get("val")
        if isinstance(v, (tuple, list)):
            return [out] + [self.fresh(_shape(e), x.act) if _shape(e) is not None else None for e in v[1:]]
        return out

    def r_layer_norm(self, args, kwargs):
        x, shape = args[0], list(args[1])
        dims = x.dims[len(x.dims) - len(shape) :]
        for t in args[2:4]:
            if isinstance(t, T):
                for a, b in zip(dims, t.dims, strict=True):
                    self.sp.unify(a, b, self.where)
        for d in dims:
            self.flag(d, "inexact", "LayerNorm normalises over these channels")
        self.records.append(Record(_module_of(self.node)[0], "shape", list(dims)))
        return T(list(x.dims), x.act)

    def r_native_layer_norm(self, args, kwargs):
        out = self.r_layer_norm(args, kwargs)
        return [out] + [self.fresh(_shape(e), out.act) for e in self.node.meta["val"][1:]]

    def r_rms_norm(self, args, kwargs):
        return self.r_layer_norm([args[0], args[1], args[2] if len(args) > 2 else None], kwargs)

    def r_group_norm(self, args, kwargs):
        x = args[0]
        for t in args[2:4]:
            if isinstance(t, T):
                self.sp.unify(x.dims[1], t.dims[0], self.where)
        self.flag(x.dims[1], "protected", "GroupNorm's groups are not pruned")
        return T(list(x.dims), x.act)

    def r_native_group_norm(self, args, kwargs):
        out = self.r_group_norm([args[0], None, args[1], args[2]], kwargs)
        return [out] + [self.fresh(_shape(e), out.act) for e in self.node.meta["val"][1:]]

    def r_embedding(self, args, kwargs):
        w, idx = args[0], args[1]
        self.flag(w.dims[0], "protected", "embedding rows (the vocabulary)")
        self._produce(w, 1)
        return T(list(idx.dims) + [w.dims[1]], True)

    def r_prelu(self, args, kwargs):
        x, w = args[0], args[1]
        if w.dims[0].size > 1:
            self.sp.unify(x.dims[1 if len(x.dims) > 1 else 0], w.dims[0], self.where)
        return T(list(x.dims), x.act)

    r__prelu_kernel = r_prelu

    # ------------------------------------------------------------------------------------------ attention
    def attention(self, a: T, b: T, out_shape, contract_b: int):
        """a @ b with both operands activations (attention scores / weighted values): batch dims are the
        heads; the matrix dims (head_dim, positions) are protected: heads are removed whole."""
        nb = len(out_shape) - 2
        batch = self.broadcast([T(a.dims[:-2], a.act), T(b.dims[:-2], b.act)], out_shape[:nb])
        for d in (a.dims[-2], a.dims[-1], b.dims[-2], b.dims[-1]):
            self.flag(d, "protected", "head_dim or positions of an attention")
        self.sp.unify(a.dims[-1], b.dims[contract_b], self.where)
        for d in batch:
            self.flag(d, "heads", "attention heads")
        self.records.append(Record(_module_of(self.node)[0], "heads", batch))
        return batch

    def r_scaled_dot_product_attention(self, args, kwargs):
        q, k, v = args[:3]
        if kwargs.get("enable_gqa") or (len(args) > 7 and args[7]):
            return self.unknown(args, "grouped-query attention is not followed")
        scores = tuple(d.size for d in q.dims[:-2]) + (q.dims[-2].size, k.dims[-2].size)
        kt = T(k.dims[:-2] + [k.dims[-1], k.dims[-2]], k.act)
        batch = self.attention(q, kt, scores, -2)
        self.broadcast([T(batch, True), T(v.dims[:-2], v.act)], scores[:-2])
        self.sp.unify(k.dims[-2], v.dims[-2], self.where)
        self.flag(v.dims[-1], "protected", "head_dim of an attention")
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        if isinstance(mask, T):
            self.broadcast([T(batch + [q.dims[-2], k.dims[-2]], True), mask], scores)
        out = T(batch + [q.dims[-2], v.dims[-1]], True)
        meta = self.node.meta["val"]
        if isinstance(meta, (tuple, list)):
            return [out] + [self.fresh(_shape(e), True) if _shape(e) is not None else None for e in meta[1:]]
        return out

    r__scaled_dot_product_flash_attention_for_cpu = r_scaled_dot_product_attention

    def r_matmul(self, args, kwargs):
        a, b = args[0], args[1]
        out_shape = _shape(self.node.meta["val"])
        if len(a.dims) == 1 or len(b.dims) == 1:
            if a.act and b.act:
                return self.unknown(args, "a matrix-vector product of two activations is not followed")
            ad = [self.sp.new(1)] + a.dims if len(a.dims) == 1 else a.dims
            bd = b.dims + [self.sp.new(1)] if len(b.dims) == 1 else b.dims
            full = self._mm(
                T(ad, a.act), T(bd, b.act), tuple(d.size for d in ad[:-2]) + (ad[-2].size, bd[-1].size)
            )
            dims = full.dims
            dims = (
                dims[:-2] + ([dims[-2]] if len(a.dims) > 1 else []) + ([dims[-1]] if len(b.dims) > 1 else [])
            )
            return T(dims, full.act)
        return self._mm(a, b, out_shape)

    def _mm(self, a: T, b: T, out_shape):
        if a.act and b.act:
            batch = self.attention(a, b, out_shape, -2)
            return T(batch + [a.dims[-2], b.dims[-1]], True)
        nb = len(out_shape) - 2
        batch = self.broadcast([T(a.dims[:-2], a.act), T(b.dims[:-2], b.act)], out_shape[:nb])
        self.sp.unify(a.dims[-1], b.dims[-2], self.where)
        if not b.act:  # x @ W: W's columns are produced channels
            self.producers.append(
                Producer(_module_of(self.node)[0], self._param_name(self.node.args[1]), b.dims[-1])
            )
        return T(batch + [a.dims[-2], b.dims[-1]], a.act or b.act)

    def r_mm(self, args, kwargs):
        return self._mm(args[0], args[1], _shape(self.node.meta["val"]))

    r_bmm = r_mm

    def r_addmm(self, args, kwargs):
        out = self._mm(args[1], args[2], _shape(self.node.meta["val"]))
        return T(self.broadcast([args[0], out], _shape(self.node.meta["val"])), True)

    r_baddbmm = r_addmm

    def r_einsum(self, args, kwargs):
        return self.unknown(args, "einsum is not followed (write it as matmul / linear)")

    # ------------------------------------------------------------------------------------------ shapes
    def r_view(self, args, kwargs):
        return T(self.reshape(args[0].dims, _shape(self.node.meta["val"])), args[0].act)

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
                merged = self.sp.new(_prod(self.sp.find(g).size for g in group))
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
        x, out_shape = args[0], _shape(self.node.meta["val"])
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
        return self._split(x, [_shape(v)[dim % len(x.dims)] for v in self.node.meta["val"]], dim)

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
            + [self.sp.new(_shape(self.node.meta["val"])[dim], unsafe=f"{self.where}: a slice")]
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
                dims[i] = self.sp.new(_shape(self.node.meta["val"])[i], unsafe=f"{self.where}: padded")
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
        if name not in _REDUCE_EXACT:
            for d in dims:
                self.flag(x.dims[d], "inexact", f"{name} over these channels")
        meta = self.node.meta.get("val")
        first = meta[0] if isinstance(meta, (tuple, list)) else meta
        out_shape = _shape(first)
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
        m = _SPATIAL.match(name)
        k = int(m.group(3) or m.group(5))
        meta = self.node.meta["val"]
        first = meta[0] if isinstance(meta, (tuple, list)) else meta
        sp = [self.sp.new(int(n), protected="a spatial dim") for n in first.shape[len(x.dims) - k :]]
        out = T(x.dims[: len(x.dims) - k] + sp, x.act)
        return [out, T(list(out.dims), False)] if isinstance(meta, (tuple, list)) else out


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def trace(model: nn.Module, args: tuple, kwargs: dict):
    """torch.export of `model` on the example inputs (non-strict), in eval mode; ValueError if it cannot."""
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return torch.export.export(model, args, kwargs, strict=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"pattern='channel': torch.export cannot trace {type(model).__name__} on example_inputs "
            f"({type(e).__name__}: {first}); channel pruning needs a traceable model"
        ) from e
    finally:
        for m, mode in training.items():
            m.training = mode
