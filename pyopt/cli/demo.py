"""`pyopt demo` (= `make demo`): the classic model-optimisation case, end to end, offline, in minutes.

A small CNN learns scikit-learn's bundled digits (1,797 8x8 images, upsampled; no download), trained in
float32 with pyopt.optim.FusedSGD. Then each variant is made with pyopt's public API only — this file is
the tutorial — and measured the same way:

    float32          the trained model
    pruned-90        pyopt.prune(0.9, magnitude) of the hidden Linear layers -> masked fine-tune with
                     FusedSGD -> pyopt.sparsify(format="csr") (compressed weights, sparse kernels)
    pruned-2:4       pyopt.prune(pattern="2:4")  -> masked fine-tune -> pyopt.sparsify (the dispatcher
                     picks the fastest format, never one slower than dense)
    channel-50       pyopt.prune(0.5, pattern="channel"): a physically smaller dense model -> fine-tune
    layer-pruned     pyopt.prune_layers(1, blocks=[conv3, fc2]): the shape-preserving layer whose output turns
                     its input least (angular distance on 4 training batches) becomes an identity -> fine-tune
    int8             pyopt.quantize(mode="dynamic"): int8 weights, int8 activations quantised on the fly
    pruned-90+int8   the fine-tuned pruned-90 model, sparsified to CSR, then pyopt.quantize: the pruned head
                     becomes csr_int8 (weight-only int8 CSR), the layers still dense Int8Linear / Int8Conv2d
    binary           pyopt.quantize(mode="binary") of the hidden Linear layers: 1-bit packed weights

For each: test accuracy, size of its pyopt.save file, latency at batch 1 and 256 (median of interleaved
repeated runs after warm-up, one process, torch.inference_mode), speedup vs float32, and a reload check:
pyopt.load into a fresh float model of the original architecture (it resizes channel-pruned layers and puts
identities where layers were removed) must give bit-identical outputs.
Outputs: a terminal table and --out/{results.json, results.md, tradeoffs.png} (pyopt/demo_report.py).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import pyopt
import pyopt.optim

from ..timing import time_many

NUM_CLASSES = 10
# The two hidden Linear layers hold 99% of the weights and most of the multiply-adds: that is where
# pruning and 1-bit weights pay. The convs are small (pyopt.quantize skips layers too small for int8 to
# pay by itself) and the 10-way classifier is tiny and the most sensitive layer, so both stay as they are.
HEAD = ["fc1", "fc2"]


@dataclasses.dataclass
class Config:
    out: str = "pyopt-demo-out"
    seed: int = 0
    epochs: int = 8  # float32 training
    finetune_epochs: int = 3  # after pruning / binarising
    width: int = 16  # conv channels: width, 2*width, 2*width
    hidden: int = 2048  # the two hidden Linear layers of the head
    size: int = 16  # digits are upsampled from 8x8 to size x size
    batch_size: int = 64
    lr: float = 0.1
    latency_min_time: float = 1.0  # seconds of timed calls per (batch size, variant), at least
    variants: tuple[str, ...] = ()  # empty = all
    progress: bool = True
    parallel: bool = True  # the pruned model's fine-tune also data- and model-parallel on 2 ranks


# ----------------------------------------------------------------------------------------- data, model
@dataclasses.dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(size: int) -> Data:
    """sklearn's digits, a fixed stratified 75/25 split (the same for every seed), upsampled, normalised."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.25, random_state=0, stratify=digits.target
    )
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    return Data(x[train_idx], y[train_idx], x[test_idx], y[test_idx])


def build_model(channels=(16, 32, 32), hidden=(2048, 2048), size: int = 16) -> nn.Sequential:
    """conv-BN-ReLU x3 (the second with stride 2), then a 3-layer Linear head. Named layers, so that
    include/exclude lists and reports read well."""
    c1, c2, c3 = channels
    h1, h2 = hidden
    flat = c3 * ((size + 1) // 2) ** 2  # conv2 has stride 2
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, c1, 3, padding=1, bias=False),
            bn1=nn.BatchNorm2d(c1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False),
            bn2=nn.BatchNorm2d(c2),
            relu2=nn.ReLU(),
            conv3=nn.Conv2d(c2, c3, 3, padding=1, bias=False),
            bn3=nn.BatchNorm2d(c3),
            relu3=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(flat, h1),
            relu4=nn.ReLU(),
            fc2=nn.Linear(h1, h2),
            relu5=nn.ReLU(),
            out=nn.Linear(h2, NUM_CLASSES),
        )
    )


# ------------------------------------------------------------------------------------ train, evaluate
def train(model: nn.Module, data: Data, cfg: Config, epochs: int, lr: float, desc: str) -> nn.Module:
    """SGD with Nesterov momentum and weight decay (pyopt.optim.FusedSGD: one fused pass per step; it
    keeps pruned weights and their momentum exactly zero by itself), 1-epoch warm-up then cosine decay."""
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    opt = pyopt.optim.FusedSGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(epochs * steps_per_epoch, 1)
    warmup = min(steps_per_epoch, total // 4)
    bar = tqdm(total=total, desc=f"{desc:<14s}", disable=not cfg.progress, leave=True, file=sys.stderr)
    step = 0
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            t = step / total
            scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * t))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            if step % 5 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.set_postfix(loss=f"{loss.item():.3f}", test_acc=f"{100 * accuracy(model, data):.2f}%")
        model.train()
    bar.close()
    model.eval()
    return model


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(x)


def accuracy(model: nn.Module, data: Data) -> float:
    return (predict(model, data.x_test).argmax(1) == data.y_test).float().mean().item()


# ------------------------------------------------------------------------------------------- variants
# Each variant is one small function: (trained float model, data, config, earlier variants) -> model.
# They start from a deep copy, so the float model stays untouched.


def make_float32(base, data, cfg, done):
    return copy.deepcopy(base)


def _prune_finetune(base, data, cfg, desc, **prune_args):
    model, report = pyopt.prune(copy.deepcopy(base), **prune_args)
    train(model, data, cfg, cfg.finetune_epochs, cfg.lr / 10, desc)
    return model, report


# At 90% sparsity CSR is the known winner (several times faster than dense here, 6.7x smaller), so the
# pruned-90 variants ask for it: that keeps their file size independent of the dispatcher's timing
# calibration, which a busy machine makes noisy. Without `format`, pyopt.sparsify lets the dispatcher pick
# the fastest format, never one slower than dense (as pruned-2:4 does).
SPARSE_FORMAT_90 = "csr"


def make_pruned_90(base, data, cfg, done):
    model, _ = _prune_finetune(base, data, cfg, "fine-tune 90%", amount=0.9, include=HEAD)
    done["pruned-90 (trained, masked)"] = copy.deepcopy(model)  # reused by pruned-90+int8
    model, _ = pyopt.sparsify(model, format=SPARSE_FORMAT_90)  # compressed weights, sparse kernels
    return model


def make_pruned_2_4(base, data, cfg, done):
    model, _ = _prune_finetune(base, data, cfg, "fine-tune 2:4", amount=0.5, pattern="2:4", include=HEAD)
    model, _ = pyopt.sparsify(model)
    return model


def make_channel_50(base, data, cfg, done):
    model, _ = _prune_finetune(base, data, cfg, "fine-tune ch50", amount=0.5, pattern="channel")
    return model


def make_layer_pruned(base, data, cfg, done):
    """Layer pruning: conv3 (2w -> 2w channels, stride 1) and fc2 (hidden -> hidden) keep their input's shape,
    so either can become an identity; pyopt.prune_layers removes the one with the smaller angular distance
    between its input and output on calibration batches, then a short fine-tune recovers."""
    calib = [data.x_train[i : i + cfg.batch_size] for i in range(0, 4 * cfg.batch_size, cfg.batch_size)]
    model, _ = pyopt.prune_layers(copy.deepcopy(base), 1, calib, blocks=["conv3", "fc2"])
    train(model, data, cfg, cfg.finetune_epochs, cfg.lr / 10, "fine-tune layer")
    return model


def make_int8(base, data, cfg, done):
    model, _ = pyopt.quantize(copy.deepcopy(base), mode="dynamic")
    return model


def make_pruned_90_int8(base, data, cfg, done):
    pruned = done.get("pruned-90 (trained, masked)")
    if pruned is None:  # pruned-90 was not asked for: prune and fine-tune here
        pruned, _ = _prune_finetune(base, data, cfg, "fine-tune 90%", amount=0.9, include=HEAD)
    model, _ = pyopt.sparsify(copy.deepcopy(pruned), format=SPARSE_FORMAT_90)  # the pruned head
    # csr -> csr_int8 for the pruned head (weight-only int8 CSR, 3 B per kept weight instead of 6), int8 for
    # the layers still dense
    model, _ = pyopt.quantize(model, mode="dynamic")
    return model


def make_binary(base, data, cfg, done):
    """1-bit weights for the hidden Linear layers (BinaryLinear: sign bits + a scale per row, 32x smaller).
    No fine-tune: a binarisation-aware one (straight-through sign, 3 epochs) was tried and did not beat
    the plain conversion on this model (both within one test image of float32)."""
    model, _ = pyopt.quantize(copy.deepcopy(base), mode="binary", include=HEAD)
    return model


VARIANTS: dict[str, Callable] = {
    "float32": make_float32,
    "pruned-90": make_pruned_90,
    "pruned-2:4": make_pruned_2_4,
    "channel-50": make_channel_50,
    "layer-pruned": make_layer_pruned,
    "int8": make_int8,
    "pruned-90+int8": make_pruned_90_int8,
    "binary": make_binary,
}


# ------------------------------------------------------------------------------------------- measuring
def measure_latency(models: dict[str, nn.Module], x: torch.Tensor, min_time: float) -> dict[str, float]:
    """Median ms per forward of each model on x, in interleaved rounds (pyopt.timing.time_many)."""
    for m in models.values():
        m.eval()
    with torch.inference_mode():
        fns = {name: (lambda m=m: m(x)) for name, m in models.items()}
        t = time_many(fns, repeat=5, min_time=min_time * len(models), warmup=3)
    return {k: 1e3 * v for k, v in t.items()}


def describe(model: nn.Module) -> str:
    """Which pyopt layers a variant is made of, e.g. "fc1, fc2: SparseLinear (csr); out: Int8Linear"."""
    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if type(module).__module__.startswith("pyopt."):
            fmt = getattr(module, "format", None)
            kind = type(module).__name__ + (f" ({fmt})" if isinstance(fmt, str) else "")
            groups.setdefault(kind, []).append(name)
    return "; ".join(f"{', '.join(names)}: {kind}" for kind, names in groups.items()) or "torch layers only"


def save_and_reload(name: str, model: nn.Module, data: Data, out_dir: str, cfg: Config) -> tuple[int, bool]:
    """pyopt.save the variant; pyopt.load it into a fresh float model of the original architecture; compare."""
    path = os.path.join(out_dir, "models", name.replace(":", "_").replace("+", "_") + ".safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pyopt.save(model, path)
    w = cfg.width
    fresh = pyopt.load(build_model((w, 2 * w, 2 * w), (cfg.hidden, cfg.hidden), cfg.size), path)
    identical = torch.equal(predict(model, data.x_test), predict(fresh, data.x_test))
    return os.path.getsize(path), identical


# ------------------------------------------------------------------------------------------------ main
def run(cfg: Config) -> dict:
    from . import demo_report

    torch.manual_seed(cfg.seed)
    names = list(cfg.variants or VARIANTS)
    if "float32" not in names:
        names.insert(0, "float32")  # the baseline of every speedup
    os.makedirs(cfg.out, exist_ok=True)
    t_start = time.perf_counter()

    data = load_digits(cfg.size)
    base = build_model((cfg.width, 2 * cfg.width, 2 * cfg.width), (cfg.hidden, cfg.hidden), cfg.size)
    n_params = sum(p.numel() for p in base.parameters())
    print(
        f"pyopt demo: digits {len(data.y_train)} train / {len(data.y_test)} test at {cfg.size}x{cfg.size}, "
        f"CNN {n_params / 1e6:.2f}M params, seed {cfg.seed}, {torch.get_num_threads()} threads"
    )
    train(base, data, cfg, cfg.epochs, cfg.lr, "train float32")

    models: dict[str, nn.Module] = {}
    failed: dict[str, str] = {}
    parallel = _parallel_runs(base, data, cfg, failed) if cfg.parallel else None
    done: dict[str, nn.Module] = {}
    for name in names:
        try:
            torch.manual_seed(cfg.seed)
            models[name] = VARIANTS[name](base, data, cfg, done).eval()
        except Exception as e:  # a variant that cannot be made is reported, the others still run
            failed[name] = f"{type(e).__name__}: {e}"
            print(f"[demo] {name}: FAILED ({failed[name]})", file=sys.stderr)

    print("[demo] measuring accuracy, size on disk, reload, latency ...", file=sys.stderr, flush=True)
    rows, layers = {}, {}
    for name, model in list(models.items()):
        try:
            size_bytes, identical = save_and_reload(name, model, data, cfg.out, cfg)
        except Exception as e:
            failed[name] = f"save/load: {type(e).__name__}: {e}"
            print(f"[demo] {name}: FAILED ({failed[name]})", file=sys.stderr)
            del models[name]
            continue
        rows[name] = {"name": name, "accuracy": accuracy(model, data), "size_bytes": size_bytes}
        rows[name]["reload_identical"] = identical
        layers[name] = describe(model)
    for batch in (1, 256) if models else ():
        x = data.x_test[:batch]
        lat = measure_latency(models, x, cfg.latency_min_time)
        for name, ms in lat.items():
            rows[name][f"latency_ms_b{batch}"] = ms
    load = (os.getloadavg()[0], os.cpu_count() or 1)  # a busy machine makes the latencies unreliable
    for r in rows.values():
        for batch in (1, 256):
            base_ms = rows["float32"][f"latency_ms_b{batch}"] if "float32" in rows else float("nan")
            r[f"speedup_b{batch}"] = base_ms / r[f"latency_ms_b{batch}"]
    keys = ["name", "accuracy", "size_bytes", "latency_ms_b1", "latency_ms_b256"]
    keys += ["speedup_b1", "speedup_b256", "reload_identical"]
    results = {
        "machine": demo_report.machine_name(),
        "torch": torch.__version__,
        "pyopt": pyopt.__version__,
        "variants": [{k: rows[n][k] for k in keys} for n in names if n in rows],
    }
    if parallel is not None:
        results["parallel"] = parallel
    demo_report.write_all(results, failed, cfg, time.perf_counter() - t_start, len(data.y_test), load, layers)
    if parallel is not None:
        from . import demo_parallel

        text = demo_parallel.markdown(parallel)
        print("\n" + text)
        with open(os.path.join(cfg.out, "results.md"), "a") as f:
            f.write("\n" + text + "\n")
    return {"results": results, "failed": failed}


def _parallel_runs(base, data, cfg, failed) -> dict | None:
    """The pruned model's fine-tune, single / data-parallel / model-parallel (pyopt/cli/demo_parallel.py)."""
    from . import demo_parallel

    print("[demo] fine-tuning the pruned model data- and model-parallel on 2 ranks ...", file=sys.stderr)
    try:
        return demo_parallel.run(base, data, cfg, HEAD, os.path.join(cfg.out, "parallel"))
    except Exception as e:  # reported like a failed variant; the rest of the demo still runs
        failed["parallel"] = f"{type(e).__name__}: {e}"
        print(f"[demo] parallel runs: FAILED ({failed['parallel']})", file=sys.stderr)
        return None


def config_from_args(args) -> Config:
    cfg = Config()
    if getattr(args, "quick", False):  # a faster, smaller run (well under a minute)
        cfg = dataclasses.replace(cfg, epochs=4, finetune_epochs=1, hidden=1024, latency_min_time=0.3)
    if getattr(args, "smoke", False):  # the test suite's run: a tiny model, seconds
        cfg = dataclasses.replace(
            cfg,
            epochs=1,
            finetune_epochs=1,
            width=4,
            hidden=128,  # fc2 128x128: the smallest layer pyopt.quantize converts by default
            size=8,
            latency_min_time=0.01,
        )
    for field in ("out", "seed", "epochs", "finetune_epochs", "width", "hidden", "size"):
        value = getattr(args, field, None)
        if value is not None:
            cfg = dataclasses.replace(cfg, **{field: value})
    if getattr(args, "variants", None):
        cfg = dataclasses.replace(cfg, variants=tuple(v.strip() for v in args.variants.split(",")))
    if getattr(args, "no_progress", False):
        cfg = dataclasses.replace(cfg, progress=False)
    if getattr(args, "no_parallel", False):
        cfg = dataclasses.replace(cfg, parallel=False)
    unknown = [n for n in cfg.variants if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {','.join(VARIANTS)}")
    if min(cfg.epochs, cfg.width, cfg.hidden, cfg.size) < 1 or cfg.finetune_epochs < 0:
        raise ValueError("--epochs, --width, --hidden, --size must be >= 1 and --finetune-epochs >= 0")
    return cfg


def main(args) -> int:
    """Entry point of `pyopt demo` (see add_arguments for the flags). Exit code 1 if a variant failed."""
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"pyopt demo: error: {e}", file=sys.stderr)
        return 2
    outcome = run(cfg)
    return 1 if outcome["failed"] else 0


def add_arguments(parser) -> None:
    """The flags of `pyopt demo` (called by pyopt/cli.py)."""
    parser.add_argument("--out", default=None, help="output folder (default pyopt-demo-out/)")
    parser.add_argument("--seed", type=int, default=None, help="seed of initialisation and shuffling (0)")
    parser.add_argument("--epochs", type=int, default=None, help="float32 training epochs (8)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="fine-tune epochs per variant (3)")
    parser.add_argument("--width", type=int, default=None, help="conv channels: W, 2W, 2W (16)")
    parser.add_argument(
        "--hidden", type=int, default=None, help="width of the two hidden Linear layers (2048)"
    )
    parser.add_argument("--size", type=int, default=None, help="digits upsampled to SIZE x SIZE (16)")
    parser.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument(
        "--quick", action="store_true", help="fewer epochs, smaller head (well under a minute)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model, 1 epoch: checks the pipeline only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--no-parallel",
        action="store_true",
        help="skip the data-/model-parallel fine-tune runs (2 processes)",
    )
