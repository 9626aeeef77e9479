"""Structured channel pruning without a trace: physically remove output channels of Conv2d/Linear layers in
nn.Sequential chains (pyopt.prune(pattern="channel") without example_inputs; with them, any traceable model
goes through pyopt/pruning/structured.py instead, whose group importance also counts the consumers' columns).

For every selected layer but the last Linear/Conv2d of the chain, the output channels (conv filters, linear
rows) with the smallest L1 (or L2) norm of their weights are removed (Li et al. 2017, "Pruning Filters for
Efficient ConvNets"), together with what consumes them further down the chain:
  - BatchNorm1d/2d and PReLU(num_parameters=C) in between: their per-channel parameters and statistics;
  - the next Conv2d: its input channels; the next Linear: its input features, where a Flatten after a conv
    maps channel c to the block of features [c*HW, (c+1)*HW) (HW = in_features / C);
  - element-wise activations, pooling, Dropout, Identity pass channels through unchanged.
The result is a smaller dense model whose output equals the original's with the removed channels' inputs to
the next layer zeroed. Anything else (custom forward, residual blocks, grouped convs, LayerNorm, Softmax,
...) raises a ValueError naming the module: we cannot prove which channels it mixes.
Ties: the removed channels are `torch.topk(norms, k, largest=False)`, as torch's ln_structured does.
"""

from __future__ import annotations

import torch
from torch import nn

from ..convert.report import Report
from . import masks as M
from .resize import record_shape
from .select import select_layers

_PASSTHROUGH = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Threshold, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.LPPool1d, nn.LPPool2d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)  # fmt: skip
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _leaves(seq: nn.Sequential, prefix: str = ""):
    """(qualified name, parent Sequential, attribute, module) in execution order, through nested Sequentials."""
    for attr, child in seq.named_children():
        name = f"{prefix}{attr}"
        if _is_plain_sequential(child):
            yield from _leaves(child, name + ".")
        else:
            yield name, seq, attr, child


def _check_leaf(name: str, module: nn.Module) -> str:
    if type(module) in (nn.Linear, nn.Conv2d):
        if type(module) is nn.Conv2d and module.groups != 1:
            raise ValueError(f"pattern='channel' cannot prune grouped conv '{name}' (groups={module.groups})")
        return "layer"
    if type(module) in _BATCHNORM:
        return "bn"
    if type(module) is nn.PReLU:
        return "prelu"
    if type(module) is nn.Flatten:
        return "flatten"
    if type(module) in _PASSTHROUGH:
        return "pass"
    raise ValueError(
        f"pattern='channel' cannot follow module '{name}' ({type(module).__name__}): it supports nn.Sequential "
        "chains (nested ok) of nn.Linear, nn.Conv2d (groups=1), BatchNorm1d/2d, PReLU, element-wise activations, "
        "pooling, Dropout and Flatten; prune other layers with a mask pattern instead"
    )


def _feature_index(keep: torch.Tensor, channels: int, features: int, name: str) -> torch.Tensor:
    """Indices of the features that carry the kept channels (a flattened conv output has HW per channel)."""
    if features == channels:
        return keep
    if features % channels:
        raise ValueError(
            f"pattern='channel': '{name}' has {features} input features, not a multiple of the "
            f"{channels} channels feeding it"
        )
    hw = features // channels
    return (keep[:, None] * hw + torch.arange(hw, device=keep.device)).reshape(-1)


def _channel_scores(weight, method, generator, norm: int) -> torch.Tensor:
    w = weight.detach().reshape(weight.shape[0], -1)
    if method == "random":
        return M.random_scores((w.shape[0],), w.dtype, w.device, generator)
    return torch.linalg.vector_norm(w.to(torch.promote_types(w.dtype, torch.float32)), ord=norm, dim=1)


def _keep_channels(name, weight, amount, method, generator, norm) -> torch.Tensor:
    channels = weight.shape[0]
    k = M.count_to_prune(amount, channels, f"output channels of '{name}'")
    if k >= channels:
        raise ValueError(
            f"amount={amount!r} would remove all {channels} output channels of '{name}'; at least "
            "one must remain"
        )
    keep = torch.ones(channels, dtype=torch.bool, device=weight.device)
    if k:
        # random: torch's convention, the k largest draws are pruned; magnitude: the k smallest norms
        scores = _channel_scores(weight, method, generator, norm)
        keep[torch.topk(scores, k, largest=(method == "random")).indices] = False
    return keep.nonzero().flatten()


def _resized_layer(layer: nn.Module, in_index, out_index) -> nn.Module:
    """A copy of a Linear/Conv2d keeping the given input and output indices (None = all)."""
    weight = layer.weight.detach()
    if out_index is not None:
        weight = weight.index_select(0, out_index)
    if in_index is not None:
        weight = weight.index_select(1, in_index)
    kw = {"bias": layer.bias is not None, "device": weight.device, "dtype": weight.dtype}
    if type(layer) is nn.Linear:
        new = nn.Linear(weight.shape[1], weight.shape[0], **kw)
    else:
        new = nn.Conv2d(
            weight.shape[1],
            weight.shape[0],
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            1,
            padding_mode=layer.padding_mode,
            **kw,
        )
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is not None:
            bias = layer.bias.detach()
            new.bias.copy_(bias if out_index is None else bias.index_select(0, out_index))
    new.train(layer.training)
    return new


def _resized_norm(module: nn.Module, index) -> nn.Module:
    """BatchNorm / PReLU with only the channels in `index`."""
    if type(module) is nn.PReLU:
        new = nn.PReLU(len(index), device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(module.weight.detach().index_select(0, index))
        return new
    state = {
        key: value if key == "num_batches_tracked" else value.index_select(0, index)
        for key, value in module.state_dict().items()
    }
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
    new = type(module)(
        len(index),
        module.eps,
        module.momentum,
        module.affine,
        module.track_running_stats,
        device=index.device,
        dtype=dtype,
    )
    new.load_state_dict(state)
    new.train(module.training)
    return new


def prune_channels(model, amount, method, include, exclude, generator, norm=1, importance_scores=None):
    """Remove output channels along an nn.Sequential chain; see the module docstring. Returns (model, Report).

    importance_scores: {layer name: tensor of its weight's shape} ranked (by the same channel norm) instead of
    the layer's weight."""
    if norm not in (1, 2):
        raise ValueError(f"channel_norm={norm!r}: expected 1 (L1) or 2 (L2)")
    if not _is_plain_sequential(model):
        raise ValueError(
            f"pattern='channel' follows nn.Sequential chains only; got {type(model).__name__}, whose forward() "
            "wiring (e.g. residual connections) it cannot follow without a trace: pass example_inputs= "
            "(pyopt compress: --input-shape) to prune any model torch.export can trace"
        )
    leaves = list(_leaves(model))
    kinds = [_check_leaf(name, mod) for name, _, _, mod in leaves]
    layer_positions = [i for i, k in enumerate(kinds) if k == "layer"]
    selected_layers = select_layers(model, include, exclude)
    selected = {name for name, _ in selected_layers}
    scores = M.check_importance_scores(importance_scores, selected_layers, "weight", method)
    report = Report("prune (channel)")
    before = sum(p.numel() for p in model.parameters())
    pending = None  # (kept channel indices, channel count, producer name, flattened since?)
    for i, ((name, parent, attr, module), kind) in enumerate(zip(leaves, kinds, strict=True)):
        new = None
        if kind == "layer":
            in_index = None
            if pending is not None:
                keep, channels, producer, flattened = pending
                if type(module) is nn.Conv2d and module.in_channels != channels:
                    raise ValueError(
                        f"pattern='channel': conv '{name}' takes {module.in_channels} channels but "
                        f"'{producer}' makes {channels}"
                    )
                if type(module) is nn.Linear and channels != module.in_features and not flattened:
                    raise ValueError(
                        f"pattern='channel': '{name}' takes {module.in_features} features but "
                        f"'{producer}' makes {channels} channels and no Flatten is in between"
                    )
                in_index = _feature_index(keep, channels, module.weight.shape[1], name)
            weight = scores.get(name, module.weight)
            weight = weight if in_index is None else weight.index_select(1, in_index)
            out_index, pending = None, None
            if name in selected and i != layer_positions[-1]:
                out_index = _keep_channels(name, weight, amount, method, generator, norm)
                pending = (out_index, weight.shape[0], name, False)
            if in_index is not None or out_index is not None:
                new = _resized_layer(module, in_index, out_index)
                record_shape(new)
                report.add(
                    name,
                    "resized",
                    type=type(module).__name__,
                    inputs=f"{module.weight.shape[1]}->{new.weight.shape[1]}",
                    outputs=f"{module.weight.shape[0]}->{new.weight.shape[0]}",
                    params=sum(p.numel() for p in new.parameters()),
                )
        elif pending is not None:
            keep, channels, producer, flattened = pending
            if kind == "flatten":
                if (module.start_dim, module.end_dim) != (1, -1):
                    raise ValueError(
                        f"pattern='channel' supports Flatten(1, -1) only, '{name}' is "
                        f"Flatten({module.start_dim}, {module.end_dim})"
                    )
                pending = (keep, channels, producer, True)
            elif kind == "bn" or (kind == "prelu" and module.num_parameters > 1):
                features = module.num_features if kind == "bn" else module.num_parameters
                new = _resized_norm(module, _feature_index(keep, channels, features, name))
                record_shape(new)
        if new is not None:
            setattr(parent, attr, new)
    after = sum(p.numel() for p in model.parameters())
    report.summary = {
        "params_before": before,
        "params_after": after,
        "ratio": after / before if before else 1.0,
    }
    return model, report
