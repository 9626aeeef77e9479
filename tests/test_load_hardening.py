"""pyopt.load on untrusted files: atomic (the model is unchanged on any error), sizes checked against the
file and the model before anything is allocated, the checksum covering the metadata, and tampered files
(truncated, flipped bytes, headers lying about shapes / offsets / dtypes, sparse indices out of range)
refused with a ValueError before any kernel reads them."""

import json
import random
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import pyopt
from pyopt.io.file_checks import digest
from pyopt.nn import Int8Linear, SparseLinear


def model_fn():
    return nn.Sequential(
        nn.Linear(32, 48),
        nn.ReLU(),
        nn.Linear(48, 48),
        nn.ReLU(),
        nn.Linear(48, 40),
        nn.ReLU(),
        nn.Linear(40, 8),
    )


def converted():
    """Layer 0 CSR, 2 BSR (4 x 8 blocks), 4 csr_int8, 6 Int8Linear weight-only."""
    torch.manual_seed(0)
    m = model_fn()
    m[0] = SparseLinear.from_dense(m[0], torch.rand(48, 32) > 0.6).compress(format="csr")
    block_mask = (torch.rand(12, 6) > 0.5).repeat_interleave(4, 0).repeat_interleave(8, 1)
    m[2] = SparseLinear.from_dense(m[2], block_mask).compress(format="bsr", block=(4, 8))
    m[4] = SparseLinear.from_dense(m[4], torch.rand(40, 48) > 0.5).compress(format="csr").quantize_int8()
    m[6] = Int8Linear.from_float(m[6], mode="weight_only")
    return m


@pytest.fixture
def saved(tmp_path):
    model = converted()
    path = tmp_path / "m.safetensors"
    pyopt.save(model, path)
    return model, path


def read(path):
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def rewrite(path, out, meta_edit=None, tensor_edit=None, resign=True):
    """The file with edited metadata / tensors; resign=True recomputes the checksum (an adversary can)."""
    meta, tensors = read(path)
    if tensor_edit:
        tensor_edit(tensors)
    if meta_edit:
        meta_edit(meta)
    if resign:
        meta["sha256"] = digest(meta, tensors)
    save_file(tensors, str(out), metadata=meta)
    return out


def edit_config(layer, **fields):
    def edit(meta):
        mods = json.loads(meta["modules"])
        mods[layer]["config"].update(fields)
        meta["modules"] = json.dumps(mods)

    return edit


def snapshot(model):
    return [(n, id(m)) for n, m in model.named_modules()], {
        k: v.clone() for k, v in model.state_dict().items()
    }


def assert_unchanged(model, snap):
    mods, state = snap
    assert [(n, id(m)) for n, m in model.named_modules()] == mods
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())


def test_roundtrip_all_layer_kinds(saved):
    model, path = saved
    fresh = pyopt.load(model_fn(), path)
    x = torch.randn(5, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize(
    "layer, fields, fragment",
    [
        ("2", {"block": [0, 4]}, r"layer '2' \(SparseLinear\): config field 'block'"),
        ("0", {"nnz": -5}, r"layer '0' \(SparseLinear\): config field 'nnz'"),
        ("6", {"device": "meta"}, r"layer '6' \(Int8Linear\): config field 'device' is not allowed"),
        ("6", {"in_features": "40"}, r"layer '6' \(Int8Linear\): config field 'in_features'"),
        ("6", {"bias": 1}, r"layer '6' \(Int8Linear\): config field 'bias'"),
        ("6", {"mode": "int4"}, r"layer '6' \(Int8Linear\): invalid config: ValueError: mode must be"),
        ("4", {"format": "coo"}, r"layer '4' \(SparseLinear\): invalid config"),
        ("6", {"surprise": 1}, r"layer '6' \(Int8Linear\): invalid config: TypeError"),
    ],
)
def test_bad_config_is_a_value_error_and_the_model_is_unchanged(saved, tmp_path, layer, fields, fragment):
    _, path = saved
    bad = rewrite(path, tmp_path / "bad.safetensors", meta_edit=edit_config(layer, **fields))
    target = model_fn()
    snap = snapshot(target)
    with pytest.raises(ValueError, match=fragment):
        pyopt.load(target, bad)
    assert_unchanged(target, snap)


def test_sizes_are_checked_before_allocating(saved, tmp_path, monkeypatch):
    """A small file whose config describes a 40000 x 40000 Int8Linear: refused from the header, and the
    module is only ever built on the meta device (nothing allocated from the file's numbers)."""
    _, path = saved
    bad = rewrite(
        path, tmp_path / "huge.safetensors", meta_edit=edit_config("6", in_features=40000, out_features=40000)
    )
    assert bad.stat().st_size < 100_000
    devices = []
    real = Int8Linear.from_config.__func__

    def spy(cls, cfg):
        devices.append(torch.empty(0).device.type)  # the default device inside from_config
        return real(cls, cfg)

    monkeypatch.setattr(Int8Linear, "from_config", classmethod(spy))
    target = model_fn()
    snap = snapshot(target)
    with pytest.raises(
        ValueError, match=r"'6\.(bias|weight)' is torch.\w+\[[\d, ]+\] in the file but torch.\w+\[40000"
    ):
        pyopt.load(target, bad)
    assert devices == ["meta"]
    assert_unchanged(target, snap)


def test_failure_after_the_checks_still_leaves_the_model_unchanged(saved, monkeypatch):
    """Even an unexpected error while building the real modules restores every swapped layer."""
    _, path = saved
    real = Int8Linear.from_config.__func__

    def flaky(cls, cfg):
        if torch.empty(0).device.type != "meta":
            raise RuntimeError("out of memory (simulated)")
        return real(cls, cfg)

    monkeypatch.setattr(Int8Linear, "from_config", classmethod(flaky))
    target = model_fn()
    snap = snapshot(target)
    with pytest.raises(ValueError, match="the model is unchanged: RuntimeError: out of memory"):
        pyopt.load(target, path)
    assert_unchanged(target, snap)


@pytest.mark.parametrize("what", ["alias", "mode", "config"])
def test_metadata_edits_break_the_checksum(saved, tmp_path, what):
    model, path = saved

    def alias(meta):  # 2.bias now read from 0.bias (same shape)
        meta["aliases"] = json.dumps({"2.bias": "0.bias"})

    edits = {"alias": alias, "mode": edit_config("6", mode="dynamic"), "config": edit_config("0", reason="x")}
    tensor_edit = (lambda t: t.pop("2.bias")) if what == "alias" else None
    bad = rewrite(
        path, tmp_path / "e.safetensors", meta_edit=edits[what], tensor_edit=tensor_edit, resign=False
    )
    with pytest.raises(ValueError, match="checksum mismatch"):
        pyopt.load(model_fn(), bad)
    if what == "mode":  # resigned, the edit loads: it is a valid file (and the outputs change)
        ok = rewrite(path, tmp_path / "r.safetensors", meta_edit=edits[what])
        assert pyopt.load(model_fn(), ok)[6].mode == "dynamic"


def _rows_edit(key, fn):
    def edit(tensors):
        tensors[key] = fn(tensors[key].clone())

    return edit


def _set(i, v):
    def fn(t):
        t[i] = v
        return t

    return fn


@pytest.mark.parametrize(
    "key, fn, fragment",
    [
        ("0.col_indices", _set(0, 32), r"col_indices must be in \[0, 32\)"),
        ("0.col_indices", _set(0, -1), r"col_indices must be in \[0, 32\)"),
        ("2.col_indices", _set(0, 6), r"col_indices must be in \[0, 6\)"),  # 48 / bw=8 block columns
        ("4.col_indices", lambda t: t.flip(0), "strictly increasing within each row"),
        ("0.crow_indices", _set(3, 10**6), "crow_indices must|non-decreasing"),
        ("0.crow_indices", _set(-1, 3), "crow_indices must run from 0 to nnz"),
        ("0.crow_indices", _set(0, 1), "crow_indices must run from 0 to nnz"),
        ("4.row_scales", _set(0, float("nan")), "scales must be finite"),
        ("6.weight_scales", _set(1, -1.0), "scales must be finite and >= 0"),
    ],
)
def test_sparse_structure_and_scales_are_checked(saved, tmp_path, key, fn, fragment):
    _, path = saved
    bad = rewrite(path, tmp_path / "s.safetensors", tensor_edit=_rows_edit(key, fn))
    target = model_fn()
    snap = snapshot(target)
    with pytest.raises(ValueError, match=fragment):
        pyopt.load(target, bad)
    assert_unchanged(target, snap)


def test_bool_bytes_other_than_0_1_are_refused(tmp_path):
    model = nn.Sequential(SparseLinear.from_dense(nn.Linear(16, 8), torch.rand(8, 16) > 0.5))
    path = tmp_path / "m.safetensors"
    pyopt.save(model, path)
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    start, _ = header["0.mask"]["data_offsets"]
    raw[8 + n + start] = 2  # a bool byte of 2
    meta = header["__metadata__"]
    tensors = {k: v for k, v in read_raw(raw).items()}
    meta["sha256"] = digest(meta, tensors)
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="bool tensor must hold only 0 / 1"):
        pyopt.load(nn.Sequential(nn.Linear(16, 8)), tmp_path / "b.safetensors")


def read_raw(raw: bytes) -> dict:
    from safetensors.torch import load

    return load(bytes(raw))


def _header_edit(path, out, edit):
    """Rewrite the safetensors JSON header itself (the data bytes unchanged)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    out.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    return out


@pytest.mark.parametrize(
    "edit, fragment",
    [
        # a shape with the same byte count: consistent for safetensors, wrong for the model
        (lambda h: h["6.weight"].update(shape=[20, 16]), r"'6.weight' is torch.int8\[20, 16\] in the file"),
        (lambda h: h["6.weight"].update(dtype="U8"), r"'6.weight' is torch.uint8\[8, 40\] in the file"),
        (lambda h: h["6.weight"].update(shape=[4000, 4000]), "truncated or corrupted"),
        (lambda h: h["6.weight"].update(data_offsets=[0, 10**9]), "truncated or corrupted"),
        (lambda h: h["6.weight"].update(data_offsets=[4, 324]), "truncated or corrupted"),  # overlapping
        (lambda h: h["6.weight"].update(dtype="F8_E4M3"), "dtype F8_E4M3"),
    ],
    ids=["shape", "dtype", "shape-too-big", "offsets-out-of-file", "offsets-overlap", "odd-dtype"],
)
def test_lying_headers(saved, tmp_path, edit, fragment):
    _, path = saved
    bad = _header_edit(path, tmp_path / "h.safetensors", edit)
    target = model_fn()
    snap = snapshot(target)
    with pytest.raises(ValueError, match=fragment):
        pyopt.load(target, bad)
    assert_unchanged(target, snap)


def test_every_flipped_byte_is_refused(saved, tmp_path):
    """Flip bytes all over the file (length prefix, JSON header, data): always a ValueError, never a crash
    and never a silent load."""
    _, path = saved
    raw = path.read_bytes()
    rng = random.Random(0)
    positions = sorted({0, 3, 8, 9, len(raw) - 1} | {rng.randrange(len(raw)) for _ in range(60)})
    target = model_fn()
    snap = snapshot(target)
    for pos in positions:
        data = bytearray(raw)
        data[pos] ^= 0xFF
        bad = tmp_path / "f.safetensors"
        bad.write_bytes(bytes(data))
        with pytest.raises(ValueError):
            pyopt.load(target, bad)
    assert_unchanged(target, snap)


def test_truncated_at_every_section(saved, tmp_path):
    _, path = saved
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    for cut in (0, 4, 8, 8 + n // 2, 8 + n, 8 + n + 10, len(raw) - 1):
        bad = tmp_path / "t.safetensors"
        bad.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="truncated or corrupted"):
            pyopt.load(model_fn(), bad)


def test_version_1_files_are_refused_with_the_reason(saved, tmp_path):
    _, path = saved

    def v1(meta):
        meta["format_version"] = "1"

    bad = rewrite(path, tmp_path / "v1.safetensors", meta_edit=v1)
    with pytest.raises(ValueError, match="format 1 carry no checksum of their metadata: re-save"):
        pyopt.load(model_fn(), bad)


def test_alias_to_a_missing_tensor(saved, tmp_path):
    _, path = saved

    def alias(meta):
        meta["aliases"] = json.dumps({"6.bias": "nope"})

    bad = rewrite(path, tmp_path / "a.safetensors", meta_edit=alias, tensor_edit=lambda t: t.pop("6.bias"))
    with pytest.raises(ValueError, match="alias '6.bias' -> 'nope'"):
        pyopt.load(model_fn(), bad)
