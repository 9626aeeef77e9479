"""What pyopt.load checks before it touches the model or allocates from a file (pyopt/io/serialization.py).

A file is untrusted input: it may be truncated, corrupted, or edited — by hand or by an adversary who also
recomputes its checksum. The load is planned in steps, each refusing with a ValueError that names the layer
and the field before the next one runs:

1. header     safetensors' header only (names, dtypes, shapes; safetensors itself checks that the offsets
              tile the data exactly) — no tensor data is read yet
2. configs    each saved module's config, field by field (check_config), then the module is built on the
              meta device (no memory), so its tensors' shapes and dtypes are known without allocating
3. state      the state the model would have after the swaps, compared with the header: every key present,
              no extra key, each shape and dtype equal — so nothing sized by the file is ever allocated
              beyond what the model itself needs
4. data       the tensors are read and the SHA-256 over the metadata *and* the tensors is verified
5. contents   values a kernel relies on: CSR / BSR structure (crow_indices monotone from 0 to nnz, column
              indices in range and strictly increasing within a row), bool tensors holding only 0 / 1,
              finite non-negative scales

Only then does load allocate the real modules and swap them in, and it restores the model if anything
still fails (serialization.load).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import torch
from torch import nn

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def bad(path, what: str) -> ValueError:
    return ValueError(f"pyopt.load: {os.fspath(path)}: {what}")


# ---------------------------------------------------------------------------------------------------------
# 1. header, 4. data + checksum
# ---------------------------------------------------------------------------------------------------------
def read_header(path) -> tuple[dict[str, str], dict[str, tuple[torch.dtype, tuple[int, ...]]]]:
    """(metadata, {name: (dtype, shape)}) from the safetensors header, without reading tensor data."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata = f.metadata() or {}
            entries = {}
            for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                sl = f.get_slice(k)
                code = sl.get_dtype()
                if code not in _ST_DTYPES:
                    raise ValueError(f"tensor {k!r} has dtype {code}, which no pyopt module stores")
                entries[k] = (_ST_DTYPES[code], tuple(int(d) for d in sl.get_shape()))
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated / malformed files
        raise bad(path, f"not a readable safetensors file (truncated or corrupted?): {e}") from e
    return metadata, entries


def read_tensors(path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:
        raise bad(path, f"tensor data unreadable (truncated or corrupted?): {e}") from e


def digest(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every metadata field but the digest itself, then (name, dtype, shape, bytes) of every
    tensor in key order: an edit of a layer's config, of the aliases or of any tensor is detected."""
    h = hashlib.sha256()
    for key in sorted(metadata):
        if key != "sha256":
            h.update(f"{len(key)}:{key}={len(metadata[key])}:{metadata[key]}\n".encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# 2. configs
# ---------------------------------------------------------------------------------------------------------
_SIZES = (
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "num_embeddings",
    "embedding_dim",
    "nnz",
)
_FLAGS = ("bias", "binary_activations", "include_last_offset", "compressed")
_STRINGS = ("mode", "format", "reason", "padding_mode")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pair_ok(v, low: int, sizes=(2,)) -> bool:
    """An int >= low, or a list of `sizes` such ints (a conv's 1, 2 or 3 spatial dims)."""
    if _is_int(v):
        return v >= low
    return isinstance(v, list) and len(v) in sizes and all(_is_int(e) and e >= low for e in v)


def check_config(name: str, type_name: str, cfg: dict) -> None:
    """Field-level checks of a saved config (ValueError naming the layer and the field)."""

    def fail(field, want):
        return ValueError(
            f"layer {name!r} ({type_name}): config field {field!r} must be {want}, got {cfg[field]!r}"
        )

    for field, v in cfg.items():
        if field == "device":
            raise ValueError(
                f"layer {name!r} ({type_name}): config field 'device' is not allowed (got {v!r}): the model "
                "you load into decides the device"
            )
        if field in _SIZES and not (_is_int(v) and v >= 0):
            raise fail(field, "an int >= 0")
        if field == "groups" and not (_is_int(v) and v >= 1):
            raise fail(field, "an int >= 1")
        if field in ("kernel_size", "stride", "dilation") and not _pair_ok(v, 1, (1, 2, 3)):
            raise fail(field, "an int >= 1 or a list of 1-3 of them")
        if field == "padding" and not (_pair_ok(v, 0, (1, 2, 3)) or v in ("same", "valid")):
            raise fail(field, "an int >= 0, a list of 1-3 of them, 'same' or 'valid'")
        if field == "block" and not (v is None or _pair_ok(v, 1) and isinstance(v, list)):
            raise fail(field, "null or a pair of ints >= 1")
        if field in _FLAGS and not isinstance(v, bool):
            raise fail(field, "true or false")
        if field in _STRINGS and not isinstance(v, str):
            raise fail(field, "a string")
        if field == "padding_idx" and not (v is None or _is_int(v)):
            raise fail(field, "null or an int")
        if field == "dtype" and not (
            isinstance(v, str)
            and isinstance(getattr(torch, v, None), torch.dtype)
            and getattr(torch, v).is_floating_point
        ):
            raise fail(field, "the name of a torch float dtype")


def build_on_meta(name: str, cls: type[nn.Module], cfg: dict) -> nn.Module:
    """The module a config describes, built on the meta device: its tensors' shapes and dtypes, no memory."""
    try:
        with torch.device("meta"), _no_init_warnings():
            return cls.from_config(dict(cfg))
    except Exception as e:  # any error of a constructor fed a bad config is the file's fault
        raise ValueError(f"layer {name!r} ({cls.__name__}): invalid config: {type(e).__name__}: {e}") from e


@contextlib.contextmanager
def _no_init_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------------------------------------------------
# 3. state vs header
# ---------------------------------------------------------------------------------------------------------
def check_state(path, expected: dict[str, tuple], entries: dict[str, tuple]) -> None:
    """`expected` / `entries`: {key: (dtype, shape)} of the model after the swaps / of the file."""
    missing, unexpected = sorted(set(expected) - set(entries)), sorted(set(entries) - set(expected))
    if missing or unexpected:
        raise bad(
            path,
            f"state does not match the model: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}",
        )
    for key in sorted(entries):
        (dt, shape), (want_dt, want_shape) = entries[key], expected[key]
        if shape != want_shape or dt != want_dt:
            raise bad(
                path,
                f"{key!r} is {dt}{list(shape)} in the file but {want_dt}{list(want_shape)} in the model",
            )


# ---------------------------------------------------------------------------------------------------------
# 5. contents
# ---------------------------------------------------------------------------------------------------------
def _check_compressed(layer: str, tensors: dict, prefix: str, rows: int, cols: int) -> None:
    crow, col = tensors[prefix + "crow_indices"], tensors[prefix + "col_indices"]
    nnz = col.shape[0]
    what = f"layer {layer!r} (SparseLinear)"
    if crow.shape[0] != rows + 1:
        raise ValueError(f"{what}: crow_indices must have {rows + 1} entries, got {crow.shape[0]}")
    if crow[0].item() != 0 or crow[-1].item() != nnz:
        raise ValueError(
            f"{what}: crow_indices must run from 0 to nnz={nnz}, got {crow[0].item()} .. {crow[-1].item()}"
        )
    counts = crow[1:] - crow[:-1]
    if bool((counts < 0).any()):
        raise ValueError(f"{what}: crow_indices must be non-decreasing")
    if nnz == 0:
        return
    lo, hi = torch.aminmax(col)
    if lo.item() < 0 or hi.item() >= cols:
        raise ValueError(f"{what}: col_indices must be in [0, {cols}), got {lo.item()} .. {hi.item()}")
    row_of = torch.repeat_interleave(torch.arange(rows), counts)
    same_row = row_of[1:] == row_of[:-1]
    if bool(((col[1:].long() - col[:-1].long() <= 0) & same_row).any()):
        raise ValueError(f"{what}: col_indices must be strictly increasing within each row")


def check_contents(modules: dict[str, nn.Module], tensors: dict[str, torch.Tensor]) -> None:
    """Values the kernels rely on, for every tensor of the file (before any kernel reads one)."""
    for key, t in tensors.items():
        if t.dtype == torch.bool and t.numel() and int(t.view(torch.uint8).max()) > 1:
            raise ValueError(f"tensor {key!r}: a bool tensor must hold only 0 / 1 bytes")
        leaf = key.rsplit(".", 1)[-1]
        if t.is_floating_point() and leaf in ("weight_scales", "row_scales", "alpha") and t.numel():
            if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
                raise ValueError(f"tensor {key!r}: scales must be finite and >= 0")
    for name, mod in modules.items():
        fmt = getattr(mod, "format", None)
        if type(mod).__name__ != "SparseLinear" or fmt not in ("csr", "csr_int8", "bsr"):
            continue
        prefix = f"{name}." if name else ""
        bh, bw = mod.block if fmt == "bsr" else (1, 1)
        if mod.out_features % bh or mod.in_features % bw:
            raise ValueError(
                f"layer {name!r} (SparseLinear): block {mod.block} does not divide the weight shape"
            )
        _check_compressed(name, tensors, prefix, mod.out_features // bh, mod.in_features // bw)


def parse_json(path, metadata: dict[str, str], key: str) -> dict:
    try:
        value = json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise bad(path, f"metadata field {key!r} is missing or not valid JSON") from e
    if not isinstance(value, dict):
        raise bad(path, f"metadata field {key!r} must be a JSON object")
    return value
