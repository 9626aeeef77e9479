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

from .shape_rules import SPATIAL_OP, ShapeRules, T, shape_of
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
_REDUCE = {"sum", "mean", "amax", "amin", "max", "min", "var", "std", "var_mean", "std_mean", "logsumexp",
           "prod", "argmax", "argmin", "any", "all", "linalg_vector_norm", "norm", "nansum", "nanmean"}  # fmt: skip


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


class DepGraph(ShapeRules):
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
            return [self.fresh(shape_of(x), act, **flags) if shape_of(x) is not None else None for x in v]
        return self.fresh(shape_of(v), act, **flags) if shape_of(v) is not None else None

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
        if SPATIAL_OP.match(name):
            return self.spatial(name, args)
        if name in _UNARY or torch.Tag.pointwise in node.target.tags:
            return self.pointwise(args)
        return self.unknown(args, f"aten.{name} is not known to pyopt's channel tracer")

    def _node_named(self, name):
        return next(n for n in self.ep.graph.nodes if n.name == name)

    def _placeholder(self, node):
        shape = shape_of(node.meta.get("val"))
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
        out_shape = shape_of(self.node.meta.get("val"))
        if out_shape is None:
            v = self.node.meta.get("val")
            if isinstance(v, (tuple, list)) and ins:  # native_dropout: (out, mask)
                out = self.broadcast(ins, shape_of(v[0]))
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
            return [out] + [
                self.fresh(shape_of(e), x.act) if shape_of(e) is not None else None for e in v[1:]
            ]
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
        return [out] + [self.fresh(shape_of(e), out.act) for e in self.node.meta["val"][1:]]

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
        return [out] + [self.fresh(shape_of(e), out.act) for e in self.node.meta["val"][1:]]

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
            return [out] + [
                self.fresh(shape_of(e), True) if shape_of(e) is not None else None for e in meta[1:]
            ]
        return out

    r__scaled_dot_product_flash_attention_for_cpu = r_scaled_dot_product_attention

    def r_matmul(self, args, kwargs):
        a, b = args[0], args[1]
        out_shape = shape_of(self.node.meta["val"])
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
        return self._mm(args[0], args[1], shape_of(self.node.meta["val"]))

    r_bmm = r_mm

    def r_addmm(self, args, kwargs):
        out = self._mm(args[1], args[2], shape_of(self.node.meta["val"]))
        return T(self.broadcast([args[0], out], shape_of(self.node.meta["val"])), True)

    r_baddbmm = r_addmm

    def r_einsum(self, args, kwargs):
        return self.unknown(args, "einsum is not followed (write it as matmul / linear)")


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
