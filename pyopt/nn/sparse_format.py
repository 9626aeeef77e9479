"""The never-slower-than-dense format choice of compressed sparse layers (SparseLinear.compress()).

For a masked weight, `choose()` times every format that can run it here — "dense" (F.linear on the
masked weight), "csr", "bsr" (when the mask is block-structured) and "2:4" (CUDA sm80+, half precision,
2:4 masks) — at a few batch sizes M (CALIBRATION_M), and picks the sparse format only if it was faster
than dense at *every* M measured; otherwise dense. That micro-benchmark is the cost model: it is run once
per (shape, dtype, device, sparsity bucket, block structure, threads) and kept in a `DispatchCache`, an
explicit object (the default one, DEFAULT_CACHE, is the only process-wide state; pass your own to
isolate). The `Decision` keeps the measured times, so the choice and its reason can be shown and tested.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .._rules import is_block_structured, masked_weight, to_bsr, to_csr, to_csr_int8
from ..ops.native import direct
from ..timing import time_many

_CSR_LINEAR = direct("sparse_csr_linear")
_BSR_LINEAR = direct("sparse_bsr_linear")
_CSR_INT8_LINEAR = direct("sparse_csr_int8_linear")

# csr_int8 (weight-only int8 CSR) is never chosen here: pyopt.quantize / SparseLinear.quantize_int8 pick it,
# for size (1 B value + 2 B column per kept weight, + 4 B per row), not speed.
FORMATS = ("dense", "csr", "bsr", "2:4", "csr_int8")
CALIBRATION_M = (1, 64, 256)
BLOCK_SIZES = (64, 32, 16, 8, 4)
# (bh, bw) pairs, largest area first; all multiples of 4, so a mask that is not (4, 4)-structured has none
BLOCK_CANDIDATES = sorted(((h, w) for h in BLOCK_SIZES for w in BLOCK_SIZES), key=lambda b: -b[0] * b[1])

# A sparse format must beat dense by this factor at every calibrated M to be chosen: a one-time calibration
# of a few rounds is noisy (±5-10% on the 2-core machines), and a format that only ties dense in calibration
# came out 0.92x dense in the demo's later measurement — the margin keeps "never slower than dense" true.
SPARSE_MARGIN = 1.10


@dataclasses.dataclass
class Decision:
    format: str
    reason: str
    block: tuple[int, int] | None = None
    times_ms: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)  # format -> {M: ms}

    def ratio(self, fmt: str, m: int) -> float:
        """Dense time / `fmt` time at batch M in this calibration (> 1: fmt is faster)."""
        return self.times_ms["dense"][m] / self.times_ms[fmt][m]


class DispatchCache:
    """Calibrated decisions, keyed by layer shape, dtype, device, sparsity bucket, block structure."""

    def __init__(self) -> None:
        self._decisions: dict[tuple, Decision] = {}

    def get(self, key: tuple) -> Decision | None:
        return self._decisions.get(key)

    def put(self, key: tuple, decision: Decision) -> None:
        self._decisions[key] = decision

    def items(self):
        return list(self._decisions.items())

    def clear(self) -> None:
        self._decisions.clear()

    def __len__(self) -> int:
        return len(self._decisions)


DEFAULT_CACHE = DispatchCache()


def detect_block(mask: torch.Tensor) -> tuple[int, int] | None:
    """The largest block shape the mask is made of (all-kept or all-pruned blocks), if any."""
    if mask.all() or not mask.any() or not is_block_structured(mask, (4, 4)):
        return None
    for block in BLOCK_CANDIDATES:
        if is_block_structured(mask, block):
            return block
    return None


def is_2_4(mask: torch.Tensor) -> bool:
    k = mask.shape[1]
    return k % 4 == 0 and bool((mask.reshape(mask.shape[0], k // 4, 4).sum(-1) <= 2).all())


def _semi_structured_ok(weight: torch.Tensor, mask: torch.Tensor) -> bool:
    if weight.device.type != "cuda" or weight.dtype not in (torch.float16, torch.bfloat16):
        return False
    n, k = weight.shape
    return (
        torch.cuda.get_device_capability(weight.device) >= (8, 0)
        and n % 64 == 0
        and k % 64 == 0
        and is_2_4(mask)
    )


def build(fmt: str, weight: torch.Tensor, mask: torch.Tensor, block: tuple[int, int] | None = None) -> dict:
    """The tensors that store weight*mask in `fmt` (names = SparseLinear buffer names)."""
    if fmt == "dense":
        return {"weight": masked_weight(weight, mask).contiguous()}
    if fmt == "csr":
        crow, col, values = to_csr(weight, mask)
        return {"crow_indices": crow, "col_indices": col, "values": values}
    if fmt == "csr_int8":
        crow, col, values, scales = to_csr_int8(weight, mask)
        return {"crow_indices": crow, "col_indices": col, "values": values, "row_scales": scales}
    if fmt == "bsr":
        if block is None:
            raise ValueError("format='bsr' needs a block shape (bh, bw)")
        crow, col, values = to_bsr(weight, mask, block)
        return {"crow_indices": crow, "col_indices": col, "values": values}
    if fmt == "2:4":
        if not _semi_structured_ok(weight, mask):
            raise ValueError(
                "format='2:4' needs a CUDA sm80+ device, float16/bfloat16 weights, dims divisible by 64 "
                "and a 2:4 mask"
            )
        return {"weight": masked_weight(weight, mask).contiguous()}
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def semi_structured(weight: torch.Tensor) -> torch.Tensor:
    from torch.sparse import to_sparse_semi_structured

    return to_sparse_semi_structured(weight)


def linear(
    fmt: str, tensors: dict, x: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """Forward of a layer stored in `fmt` (tensors from build(); "2:4" also needs "semi")."""
    if fmt == "dense":
        return F.linear(x, tensors["weight"], bias)
    if fmt == "csr":
        op = _CSR_LINEAR
    elif fmt == "bsr":
        op = _BSR_LINEAR
    elif fmt == "2:4":
        return F.linear(x, tensors["semi"], bias)
    elif fmt == "csr_int8":
        t = tensors
        return _CSR_INT8_LINEAR(
            x, t["crow_indices"], t["col_indices"], t["values"], t["row_scales"], bias, out_features
        )
    else:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return op(x, tensors["crow_indices"], tensors["col_indices"], tensors["values"], bias, out_features)


def storage_bytes(tensors: dict) -> int:
    """Bytes a format stores (its build() tensors; the 2:4 runtime copy is not stored)."""
    return sum(t.numel() * t.element_size() for k, t in tensors.items() if k != "semi")


def calibration_ms(expected_m) -> tuple[int, ...]:
    """The batch sizes (rows M of x) to calibrate at: CALIBRATION_M, or the caller's hint — an int or a list
    of ints, the number of rows the layer sees per call in the user's runs (batch x tokens for a
    transformer, e.g. 1 for decoding, 64 * 128 for a batch of sentences)."""
    if expected_m is None:
        return CALIBRATION_M
    items = [expected_m] if isinstance(expected_m, int) else list(expected_m)
    if not items or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in items):
        raise ValueError(f"expected_m must be a positive int or a non-empty list of them, got {expected_m!r}")
    return tuple(sorted(set(items)))


def cache_key(weight: torch.Tensor, mask: torch.Tensor, block, ms) -> tuple:
    sparsity = 1.0 - mask.float().mean().item()
    bucket = round(sparsity * 20) / 20  # 5% buckets
    return (
        tuple(weight.shape),
        str(weight.dtype),
        weight.device.type,
        bucket,
        block,
        torch.get_num_threads(),
        ms,
    )


@torch.no_grad()
def choose(
    weight: torch.Tensor,
    mask: torch.Tensor,
    bias: torch.Tensor | None = None,
    cache: DispatchCache | None = None,
    ms: tuple[int, ...] = CALIBRATION_M,
    rounds: int = 5,
) -> Decision:
    """Calibrate (or look up) the fastest format for weight*mask; never one slower than dense."""
    cache = DEFAULT_CACHE if cache is None else cache
    block = detect_block(mask)
    key = cache_key(weight, mask, block, tuple(ms))
    hit = cache.get(key)
    if hit is not None:
        return hit
    candidates = {"dense": build("dense", weight, mask), "csr": build("csr", weight, mask)}
    if block is not None:
        candidates["bsr"] = build("bsr", weight, mask, block)
    if _semi_structured_ok(weight, mask):
        t = build("2:4", weight, mask)
        candidates["2:4"] = {**t, "semi": semi_structured(t["weight"])}
    # a sparse layer is never larger than the dense one (in memory and in its file): a format that stores
    # more bytes than the dense weight (CSR below ~1/3 sparsity: value + index per kept weight) is not a candidate
    dense_bytes = storage_bytes(candidates["dense"])
    oversized = [f for f in candidates if f != "dense" and storage_bytes(candidates[f]) > dense_bytes]
    for f in oversized:
        del candidates[f]
    n, k = weight.shape
    times: dict[str, dict[int, float]] = {f: {} for f in candidates}
    for m in ms:
        x = torch.randn(m, k, dtype=weight.dtype, device=weight.device)
        fns = {f: (lambda f=f, t=t, x=x: linear(f, t, x, bias, n)) for f, t in candidates.items()}
        for f, v in time_many(fns, weight.device, repeat=rounds, min_time=0.0, warmup=1).items():
            times[f][m] = v * 1e3
    # worst-case speedup over the calibrated batch sizes; sparse must beat dense at every one of them
    worst = {f: min(times["dense"][m] / times[f][m] for m in ms) for f in candidates if f != "dense"}
    best = max(worst, key=worst.get) if worst else None
    at = ", ".join
    if best is None and oversized:
        decision = Decision(
            "dense", f"dense: {', '.join(oversized)} would store more bytes than dense", None, times
        )
        cache.put(key, decision)
        return decision
    if best is not None and worst[best] > SPARSE_MARGIN:
        ratios = at(f"{times['dense'][m] / times[best][m]:.2f}x at M={m}" for m in ms)
        decision = Decision(
            best, f"{best} vs dense: {ratios} (calibrated)", block if best == "bsr" else None, times
        )
    else:
        why = (
            f"best sparse ({best}) only {worst[best]:.2f}x dense at its worst M"
            if best
            else "no sparse format"
        )
        decision = Decision("dense", f"dense: {why} (calibrated)", None, times)
    cache.put(key, decision)
    return decision
