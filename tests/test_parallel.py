"""Model parallelism with pyopt's layers and FusedSGD: 2 gloo ranks on CPU, spawned once for every test.

The ranks run every scenario in one go (tests/parallel_ranks.py) and write what they saw; each test
below checks one part of it against single-process runs computed here. Multi-GPU (nccl) is the same code
on another backend and is not run here.
"""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import pyopt
from pyopt.nn import BinaryLinear, Int8Linear, get_param_mask
from pyopt.optim import FusedSGD
from tests.parallel_ranks import (
    BATCH,
    STEPS,
    TP_KINDS,
    WORLD,
    _worker,
    load_example,
    mlp,
    mlp_batches,
    tp_float_model,
    tp_input,
    tp_layer,
    tp_model,
    train_mlp,
)
from tests.tolerances import FP32_REORDERED, tol


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run the 2 ranks once; every test reads what they wrote."""
    out = tmp_path_factory.mktemp("parallel")
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError("the 2 ranks did not finish in 240 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    results = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return results, out


# --------------------------------------------------------------------------------------------------- FSDP2
def _single_fsdp_run():
    ex = load_example("fsdp_train")
    model = ex.build_model()
    _, opt, _ = ex.train(model, ex.make_batches(STEPS + 3, BATCH)[:STEPS], "cpu")
    return ex, model, opt


def test_fsdp_matches_single_process(ranks):
    results, _ = ranks
    ex, single, opt = _single_fsdp_run()
    assert ex.masks_intact(single, opt)
    for r in results:
        assert r["fsdp_masks_intact"], "a pruned weight or its momentum is not zero on some rank"
        for key, value in single.state_dict().items():
            # Same maths; the grads are two half-batch means averaged (reduce-scatter) instead of one mean.
            torch.testing.assert_close(r["fsdp_state"][key], value, **tol(torch.float32))
        for name, p in single.named_parameters():
            mask = get_param_mask(p)
            if mask is not None:
                assert (r["fsdp_state"][name][~mask] == 0).all()
    # each rank holds its own half of every parameter (torch.chunk sizes: 64 rows -> 32 + 32, 4 -> 2 + 2)
    shapes = [r["fsdp_local_shapes"] for r in results]
    full = [tuple(p.shape) for p in single.parameters()]
    assert [s[0] for s in shapes[0]] != [f[0] for f in full]
    assert all(a[0] + b[0] == f[0] for a, b, f in zip(shapes[0], shapes[1], full, strict=True))


def test_fsdp_step_is_one_fused_call_on_local_shards(ranks):
    results, _ = ranks
    for r in results:
        assert len(r["fsdp_step_calls"]) == 1, "one fused call per parameter group"
        assert set(r["fsdp_step_calls"][0]) == {"Tensor"}, "the kernel gets local shards, not DTensors"
        assert r["fsdp_step_collectives"] == 0, "the optimizer step communicates nothing"


def test_fsdp_mixed_precision(ranks):
    results, _ = ranks
    _, single, _ = _single_fsdp_run()
    for r in results:
        assert r["bf16_masks_intact"]
        assert r["bf16_shard_dtypes"] == ["torch.float32"]  # the shards FusedSGD steps stay float32
        for key, value in single.state_dict().items():
            # forward/backward in bf16 (8-bit mantissa), grads reduced and stepped in float32
            torch.testing.assert_close(r["bf16_state"][key].float(), value.float(), **tol(torch.bfloat16))


def test_fsdp_grad_scaler(ranks):
    """GradScaler over sharded grads: torch reduces found_inf across the ranks, so an overflow in rank 1's
    shard skips the step on both; FusedSGD leaves the grads unscaled. Against one process with the same
    overflow (its step skipped too)."""
    results, _ = ranks
    ex = load_example("fsdp_train")
    model = ex.build_model()
    opt = FusedSGD(model.parameters(), **ex.OPTIM)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for step, (x, y) in enumerate(ex.make_batches(STEPS + 3, BATCH)[:STEPS]):
        opt.zero_grad()
        scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
        if step == 1:
            model[0].weight.grad[-1, -1] = float("inf")
        scaler.step(opt)
        scaler.update()
    for r in results:
        assert r["amp_scale"] == scaler.get_scale() == 2.0**10 * 0.5  # one backoff, no growth yet
        for key, value in model.state_dict().items():
            torch.testing.assert_close(r["amp_state"][key], value, **tol(torch.float32))
        torch.testing.assert_close(r["amp_grad"], model[2].bias.grad, **tol(torch.float32))


def test_dcp_resharding_round_trip(ranks):
    results, _ = ranks
    r0 = results[0]
    assert r0["one_rank_state_equal"] and r0["one_rank_bufs_equal"], "2 ranks -> 1 process"
    assert r0["one_rank_masks"], "the loaded SparseLinear layers keep their masks for FusedSGD"
    for r in results:
        assert r["back_state_equal"] and r["back_bufs_equal"], "1 process -> 2 ranks"
        assert r["continued_equal"] and r["continued_masks_intact"], "training continues identically"


def test_sharded_model_to_one_file_and_back(ranks):
    results, out = ranks
    ex = load_example("fsdp_train")
    fresh = ex.build_model(seed=3)
    pyopt.load(fresh, out / "fsdp.safetensors")  # an ordinary pyopt file, read by one process
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, results[0]["saved_state"][key]), key
    assert all(r["file_back_equal"] for r in results), "the file loaded back into a sharded model"


# ----------------------------------------------------------------------------------------- tensor parallel
def _rowwise_emulation(layer, x):
    """A row-wise split computed in one process from its definition: each rank's slice of the input
    features through the layer's own kernel (its activations quantised on that slice alone), summed in rank
    order, plus the bias once."""
    k = layer.in_features
    size = -(-k // WORLD)
    total = 0
    for r in range(WORLD):
        k0, k1 = min(r * size, k), min((r + 1) * size, k)
        xr = x[..., k0:k1]
        if isinstance(layer, Int8Linear):
            op = (
                torch.ops.pyopt.int8_linear_dynamic
                if layer.mode == "dynamic"
                else torch.ops.pyopt.int8_linear_weight_only
            )
            part = op(xr, layer.weight[:, k0:k1].contiguous(), layer.weight_scales, None)
        else:
            packed = layer.packed_weight[:, k0 // 8 : -(-k1 // 8)].contiguous()
            part = torch.ops.pyopt.binary_linear(
                xr, packed, layer.alpha, None, k1 - k0, layer.binary_activations
            )
        total = total + part
    return total + layer.bias


def _dense_weight(layer) -> torch.Tensor:
    """The float64 weight a layer computes with (int8: dequantised; binary: alpha * sign)."""
    if isinstance(layer, Int8Linear):
        return layer.weight.double() * layer.weight_scales.double()[:, None]
    if isinstance(layer, BinaryLinear):
        return layer.dequantized_weight().double()
    from pyopt._rules import dequantize_csr_int8

    fmt = layer.format
    if fmt in ("masked", "dense"):
        return (layer.weight * layer.mask if fmt == "masked" else layer.weight).double()
    w = torch.zeros(layer.out_features, layer.in_features, dtype=torch.float64)
    if fmt == "bsr":
        bh, bw = layer.block
        rows = torch.repeat_interleave(torch.arange(len(layer.crow_indices) - 1), layer.crow_indices.diff())
        for i, (br, bc) in enumerate(zip(rows.tolist(), layer.col_indices.tolist(), strict=True)):
            w[br * bh : (br + 1) * bh, bc * bw : (bc + 1) * bw] = layer.values[i].double()
        return w
    rows = torch.repeat_interleave(torch.arange(layer.out_features), layer.crow_indices.diff())
    vals = (
        dequantize_csr_int8(layer.crow_indices, layer.values, layer.row_scales)
        if fmt == "csr_int8"
        else layer.values
    )
    w[rows, layer.col_indices.long()] = vals.double()
    return w


@pytest.mark.parametrize("kind", TP_KINDS)
def test_tp_colwise_equals_single_process(ranks, kind):
    """Each rank computes whole output features from the same operands: bit for bit, except where the
    kernel's rounding depends on how many output columns it gets — torch's float32 GEMM (format "dense")
    picks its blocking by shape, and the AVX2 int8 epilogue rounds its column tail differently from its
    vector body (1 ulp; the VNNI kernel is bit-exact, tests/test_int8_linear.py) — there within the
    float32 tolerance."""
    results, _ = ranks
    layer = tp_layer(kind)
    x = tp_input(layer)
    with torch.no_grad():
        want = layer(x)
    for r in results:
        assert r[f"tp/{kind}/colwise/placement"] == "(Shard(dim=2),)"
        got = r[f"tp/{kind}/colwise"]
        if kind in ("dense", "int8-dynamic"):
            torch.testing.assert_close(got, want, **tol(torch.float32))
        else:
            assert torch.equal(got, want), (got - want).abs().max()


@pytest.mark.parametrize("kind", TP_KINDS)
def test_tp_rowwise_equals_single_process(ranks, kind):
    results, _ = ranks
    layer = tp_layer(kind)
    x = tp_input(layer)
    with torch.no_grad():
        want = layer(x)
    for r in results:
        assert r[f"tp/{kind}/rowwise/placement"] == "(Replicate(),)"
        got = r[f"tp/{kind}/rowwise"]
        if kind in ("int8-dynamic", "binary-act"):
            # Activations are quantised per rank, on the rank's slice of the features: bit-exact with that
            # computation done in one process, and at least as close to the float result as one
            # quantisation of the whole row (a slice's max |x| is at most the row's).
            with torch.no_grad():
                assert torch.equal(got, _rowwise_emulation(layer, x))
            exact = x.double() @ _dense_weight(layer).T + layer.bias.double()
            assert (got.double() - exact).abs().max() <= 1.05 * (want.double() - exact).abs().max() + 1e-5
        elif kind in ("int8-weight-only", "binary"):
            with torch.no_grad():
                assert torch.equal(got, _rowwise_emulation(layer, x))
            torch.testing.assert_close(got, want, **FP32_REORDERED)
        else:
            # float32 partial sums over each half of the features, then added: a reordered sum
            torch.testing.assert_close(got, want, **FP32_REORDERED)
            exact = x.double() @ _dense_weight(layer).T + layer.bias.double()
            torch.testing.assert_close(got.double(), exact, **tol(torch.float32))


def test_tp_mlp_block_one_all_reduce_and_training(ranks):
    results, _ = ranks
    single = mlp()
    x = mlp_batches()[0][0].clone().requires_grad_()
    want = single(x)
    want.square().sum().backward()
    single.zero_grad()
    opt = train_mlp(single, mlp_batches())
    for r in results:
        assert r["mlp_forward_comms"] == {"c10d_functional.all_reduce": 1}, r["mlp_forward_comms"]
        torch.testing.assert_close(r["mlp_forward"], want.detach(), **FP32_REORDERED)
        assert r["mlp_backward_comms"] == {"c10d_functional.all_reduce": 1}, r["mlp_backward_comms"]
        assert r["mlp_infer_comms"] == 1 and torch.equal(r["mlp_infer"], r["mlp_forward"])
        torch.testing.assert_close(r["mlp_input_grad"], x.grad, **FP32_REORDERED)
        assert r["mlp_masks_intact"]
        for key, value in single.state_dict().items():
            torch.testing.assert_close(r["mlp_trained"][key], value, **FP32_REORDERED)
    assert all(
        (single.get_submodule(n).weight[~single.get_submodule(n).mask] == 0).all() for n in ("fc1", "fc2")
    )
    assert opt.state  # the single-process run trained too


def test_tp_examples(ranks):
    results, _ = ranks
    for r in results:
        assert r["tp_example_csr"]["max_abs_diff"] < 1e-5  # float CSR: a reordered float32 sum
        # int8 W8A8: fc2's activations quantised per rank (see test_tp_rowwise_equals_single_process)
        assert r["tp_example_int8"]["max_abs_diff"] < 0.05


def test_tp_checkpoints_round_trip(ranks):
    results, out = ranks
    want = tp_model().state_dict()
    got = results[0]["tp_one_rank_state"]
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    for r in results:
        assert r["tp_back_equal"], "1 process -> 2 ranks: the same tensor-parallel outputs"
        assert r["tp_file_back_equal"], "one pyopt file -> the sharded model"
    fresh = pyopt.load(tp_float_model(), out / "tp.safetensors")  # the sharded model's file, one process
    for key, value in want.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    xt = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(results[0]["tp_model_out"], fresh(xt), **FP32_REORDERED)


def test_errors_name_the_layer(ranks):
    results, _ = ranks
    r = results[0]
    assert (
        "'head'" in r["err_bsr"]
        and "SparseLinear" in r["err_bsr"]
        and "blocks must stay whole" in r["err_bsr"]
    )
    assert "'proj'" in r["err_binary"] and "8 per byte" in r["err_binary"]
    assert "'stem'" in r["err_conv"] and "Int8Conv2d has no tensor-parallel split" in r["err_conv"]
    assert "matches no submodule" in r["err_missing"]
    assert "'fc'" in r["err_twice"] and "already split" in r["err_twice"]
    assert "1-D mesh" in r["err_mesh"] and r["ok_mesh_dim"] == "no error"
    assert r["torch_linear_mask"] == [
        "DTensor",
        (5, 6),
        (5, 6),
    ]  # nn.Linear under torch's style keeps its mask
    assert "pyopt.parallel.save" in r["err_pyopt_save"]  # a sharded model is not written shard by shard
    for res in results:
        assert "error" not in res
    print(f"rank times: FSDP part {r['t_fsdp']:.1f} s, tensor-parallel part {r['t_tp']:.1f} s")
