"""Mask computation for pyopt.prune: argument parsing, unstructured / N:M / block masks, layer or global scope.

Every function takes the weights as a list (one per layer, any shape with the output dim first) plus the
layers' current masks, and returns the new bool masks (True = keep). A new mask is always the intersection
with the current one: pruning only ever removes weights (gradual pruning grows the pruned set).

Ranking and tie-breaking follow torch.nn.utils.prune exactly:
  magnitude: the k weights with the smallest |w| are pruned, chosen by
             `torch.topk(|w|.view(-1), k, largest=False)` (torch's l1_unstructured; global scope ranks the
             concatenation of every layer's flattened |w| in module order, as prune.global_unstructured does);
  random:    `prob = torch.rand(w.shape, dtype=w.dtype, generator=generator)` and the k largest prob are pruned
             (torch's random_unstructured draws `torch.rand_like(w)` and does the same);
  k:         an int amount is a count; a float amount is a fraction rounded with Python's round() (half to even),
             k = round(amount * n) — torch's `_compute_nparams_toprune`.
Already-pruned entries rank below every live weight (score -1 for magnitude, 2 for random), so they are
counted first and `amount` is the target sparsity of the whole tensor, not of what is left.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

import torch

METHODS = ("magnitude", "random")
SCOPES = ("layer", "global")
_PRUNED_SCORE = {"magnitude": -1.0, "random": 2.0}  # ranks already-pruned entries first (see docstring)


@dataclass(frozen=True)
class Pattern:
    kind: str  # "unstructured" | "nm" | "block" | "channel"
    n: int = 0
    m: int = 0
    bh: int = 0
    bw: int = 0

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block {self.bh}x{self.bw}"
        return self.kind


def parse_pattern(pattern) -> Pattern:
    if isinstance(pattern, str):
        if pattern in ("unstructured", "channel"):
            return Pattern(pattern)
        nm = re.fullmatch(r"(\d+):(\d+)", pattern.strip())
        if nm:
            n, m = int(nm.group(1)), int(nm.group(2))
            if not 1 <= n <= m:
                raise ValueError(f"pattern={pattern!r}: N:M needs 1 <= N <= M")
            return Pattern("nm", n=n, m=m)
    elif isinstance(pattern, (tuple, list)) and len(pattern) == 2:
        if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in pattern):
            return Pattern("block", bh=int(pattern[0]), bw=int(pattern[1]))
    raise ValueError(
        f"pattern={pattern!r}: expected 'unstructured', 'channel', 'N:M' (e.g. '2:4') or a block shape "
        "(bh, bw) of positive ints"
    )


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(map(repr, choices))}")
    return value


def check_amount(amount):
    """A float fraction in [0, 1] or a non-negative int count (bool is rejected: it is neither)."""
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"amount must be a float in [0, 1] or an int count, got {type(amount).__name__}")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"amount={amount}: an int amount is a count of weights and must be >= 0")
        return int(amount)
    if not 0.0 <= amount <= 1.0:  # also rejects nan
        raise ValueError(f"amount={amount}: a float amount is a fraction and must be in [0, 1]")
    return float(amount)


def count_to_prune(amount, total: int, what: str = "weights") -> int:
    """torch's _compute_nparams_toprune plus its range check: int = count, float = round(amount * total)."""
    if isinstance(amount, int):
        if amount > total:
            raise ValueError(f"amount={amount} is larger than the number of {what} to prune ({total})")
        return amount
    return round(amount * total)


def check_importance_scores(scores, layers, pname: str, method: str) -> dict[str, torch.Tensor]:
    """importance_scores: {qualified layer name: tensor of the pruned parameter's shape} (torch's meaning:
    ranked instead of the parameter itself); every name must be a selected layer."""
    if scores is None:
        return {}
    if not isinstance(scores, dict):
        raise TypeError(
            f"importance_scores must be a dict {{layer name: tensor}}, got {type(scores).__name__}"
        )
    if method != "magnitude":
        raise ValueError(f"importance_scores ranks by magnitude; method={method!r} does not use it")
    by_name = dict(layers)
    for key, value in scores.items():
        if key not in by_name:
            raise ValueError(f"importance_scores names {key!r}, which is not a selected prunable layer")
        param = getattr(by_name[key], pname)
        if not isinstance(value, torch.Tensor) or value.shape != param.shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"importance_scores[{key!r}] must be a tensor of the {pname}'s shape {tuple(param.shape)}, got {got}"
            )
    return scores


def check_generator(generator):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) for Linear, (out, in/groups * kh * kw) for Conv2d: the dim N:M and blocks run along."""
    return weight.reshape(weight.shape[0], -1)


def random_scores(shape, dtype, device, generator) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, dtype=dtype, device=gen_device, generator=generator).to(device)


def _scores(weight, mask, method, generator) -> torch.Tensor:
    w = weight.detach()
    scores = w.abs() if method == "magnitude" else random_scores(w.shape, w.dtype, w.device, generator)
    return scores.masked_fill(~mask, _PRUNED_SCORE[method])


def _prune_k(scores: torch.Tensor, k: int, method: str) -> torch.Tensor:
    """Bool keep-vector for flat `scores`: False at the k entries torch.nn.utils.prune would prune."""
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if k > 0:  # as torch: k=0 prunes nothing
        keep[torch.topk(scores, k, largest=(method == "random")).indices] = False
    return keep


def _common_dtype(tensors) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _rank(scores: list[torch.Tensor], amount, method, scope, what) -> list[torch.Tensor]:
    """Prune per tensor (scope='layer') or over the concatenation of all (scope='global'); returns keeps."""
    if scope == "layer":
        return [_prune_k(s.reshape(-1), count_to_prune(amount, s.numel(), what), method) for s in scores]
    dtype, device = _common_dtype(scores), scores[0].device
    flat = torch.cat([s.reshape(-1).to(dtype=dtype, device=device) for s in scores])
    keep = _prune_k(flat, count_to_prune(amount, flat.numel(), what), method)
    return [k.to(s.device) for k, s in zip(keep.split([s.numel() for s in scores]), scores, strict=True)]


def unstructured_masks(weights, masks, amount, method, scope, generator) -> list[torch.Tensor]:
    if scope == "global" and method == "random":
        # one draw over the concatenation, as prune.global_unstructured(RandomUnstructured) does
        total = sum(w.numel() for w in weights)
        dtype = _common_dtype(weights)
        flat = random_scores((total,), dtype, weights[0].device, generator).split(
            [w.numel() for w in weights]
        )
        scores = [f.view(w.shape).masked_fill(~m, 2.0) for f, w, m in zip(flat, weights, masks, strict=True)]
    else:
        scores = [_scores(w, m, method, generator) for w, m in zip(weights, masks, strict=True)]
    keeps = _rank(scores, amount, method, scope, "weights")
    return [k.view(m.shape) & m for k, m in zip(keeps, masks, strict=True)]


def nm_masks(names, weights, masks, pattern: Pattern, method, generator) -> list[torch.Tensor]:
    """Keep the N largest-score entries of every M consecutive ones along the (flattened) input dim."""
    out = []
    for name, w, mask in zip(names, weights, masks, strict=True):
        rows, cols = as_matrix(w).shape
        if cols % pattern.m:
            raise ValueError(
                f"pattern='{pattern}': M={pattern.m} does not divide the input dimension {cols} of layer "
                f"'{name}' (weight {tuple(w.shape)})"
            )
        w = w.detach()
        scores = w.abs() if method == "magnitude" else random_scores(w.shape, w.dtype, w.device, generator)
        # the N largest are kept, so an already-pruned entry (-1) loses against every live one
        groups = scores.masked_fill(~mask, -1.0).reshape(rows, cols // pattern.m, pattern.m)
        keep = torch.zeros(groups.shape, dtype=torch.bool, device=w.device)
        keep.scatter_(-1, torch.topk(groups, pattern.n, dim=-1).indices, True)
        out.append(keep.view(w.shape) & mask)
    return out


def block_masks(names, weights, masks, amount, pattern: Pattern, method, scope, generator):
    """Keep whole (bh, bw) blocks of the (out, in...) matrix, ranked by block L2 norm (or at random)."""
    scores, grids = [], []
    for name, w, mask in zip(names, weights, masks, strict=True):
        rows, cols = as_matrix(w).shape
        if rows % pattern.bh or cols % pattern.bw:
            raise ValueError(
                f"pattern=({pattern.bh}, {pattern.bw}): the block does not divide the {rows}x{cols} weight "
                f"matrix of layer '{name}' (weight {tuple(w.shape)})"
            )
        grid = (rows // pattern.bh, pattern.bh, cols // pattern.bw, pattern.bw)
        live = as_matrix(mask).reshape(grid).any(dim=3).any(dim=1)  # blocks with any weight left
        if method == "magnitude":
            wm = as_matrix(w.detach().masked_fill(~mask, 0)).reshape(grid)
            s = wm.to(torch.promote_types(wm.dtype, torch.float32)).pow(2).sum(dim=(1, 3)).sqrt()
        else:
            s = random_scores(live.shape, w.dtype, w.device, generator)
        scores.append(s.masked_fill(~live, _PRUNED_SCORE[method]))
        grids.append(grid)
    keeps = _rank(scores, amount, method, scope, "blocks")
    out = []
    for keep, grid, mask in zip(keeps, grids, masks, strict=True):
        block = keep.view(grid[0], 1, grid[2], 1).expand(grid)
        out.append(block.reshape(mask.shape) & mask)
    return out


def compute_masks(names, weights, masks, amount, method, scope, pattern: Pattern, generator):
    """The new masks of `weights` (one per layer; `masks` are the current ones, all-True for dense layers)."""
    if not weights:
        return []
    if pattern.kind == "unstructured":
        return unstructured_masks(weights, masks, amount, method, scope, generator)
    if pattern.kind == "nm":
        return nm_masks(names, weights, masks, pattern, method, generator)
    if pattern.kind == "block":
        return block_masks(names, weights, masks, amount, pattern, method, scope, generator)
    raise ValueError(f"pattern='{pattern}' does not produce masks")  # channel is handled by pruning.channel
