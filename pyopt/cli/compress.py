"""`pyopt compress`: prune and/or quantise your own model and save it with pyopt.save.

    pyopt compress --model mypkg.models:make_net --weights net.safetensors \\
        --prune 0.9 [--pattern 2:4] [--quantize dynamic|weight_only|binary] -o net-small.safetensors \\
        [--eval mypkg.evaluate:accuracy]

1. `--model pkg.module:factory`: the module is imported and `factory()` called with no arguments; it must
   return the float `nn.Module` (the same one you trained).
2. `--weights`: a safetensors file, or a `torch.save`d state_dict (read with `torch.load(weights_only=True)`:
   no pickled code runs); loaded strictly, so missing, unexpected or mis-shaped tensors are an error —
   except tensors for buffers the model recomputes itself (non-persistent, e.g. `embeddings.position_ids`
   in older Hugging Face checkpoints), which are ignored with a note; `--non-strict` loads what matches.
3. The recipe: `pyopt.prune(model, AMOUNT, pattern=...)` then `pyopt.sparsify(model)` (pruned layers get
   the inference format the dispatcher measured fastest, compressed or dense); then
   `pyopt.quantize(model, mode=...)`, which converts the layers still dense (and CSR layers to csr_int8). Each step's per-layer
   report is printed.
4. `pyopt.save(model, OUT)`. Reload it later with `pyopt.load(factory(), OUT)`.

`--eval module:fn` calls `fn(model)` before and after (a number, or a dict of numbers) and prints both; a
metric that moves by more than `--eval-tolerance` (10 %) gets a loud warning on stderr.
`--pattern channel` removes whole channels (a smaller dense model): nn.Sequential chains as they are; any
other model is traced on an example input, `--input-shape 1,3,224,224` (random values) or the first batch
of `--calib data.pt` (a tensor, a tuple or a dict of tensors, read with weights_only=True). The saved file
records the new shapes: `pyopt.load(factory(), OUT)` resizes the fresh model's layers before loading.
Otherwise `--calib` is accepted but not needed by any current mode (dynamic quantisation computes
activation scales per token at run time, weight-only and binary quantise weights only): it is checked to
exist and not used — the command says so.

Errors (bad factory path, weights that do not match the model, a model without supported layers, a
`--quantize` that converts no layer, an option a layer cannot take) print one line and exit with status 2.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Callable

import torch
from torch import nn

import pyopt

QUANT_MODES = ("dynamic", "weight_only", "binary")


class CompressError(Exception):
    """A user error: printed as one line, exit status 2."""


def _cwd_importable() -> None:
    """Your project folder is importable, as with `python -m`: `pyopt compress --model mypkg.models:make_net`
    works from the folder holding mypkg/ (the `pyopt` console script's sys.path[0] is its own bin folder)."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def resolve(spec: str, flag: str) -> Callable:
    """'pkg.module:attr' -> the object (attr may be dotted: 'module:Class.create')."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CompressError(f"{flag} {spec!r}: expected 'package.module:function'")
    _cwd_importable()
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise CompressError(f"{flag} {spec!r}: cannot import module {module_name!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CompressError(f"{flag} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CompressError(f"{flag} {spec!r}: {attr!r} is not callable")
    return obj


def build_model(spec: str) -> nn.Module:
    factory = resolve(spec, "--model")
    try:
        model = factory()
    except Exception as e:
        raise CompressError(f"--model {spec!r}: the factory raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise CompressError(
            f"--model {spec!r}: the factory returned {type(model).__name__}, not an nn.Module"
        )
    return model


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CompressError(f"--weights {path!r}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CompressError(
            f"--weights {path!r}: not a safetensors file or a weights-only state_dict "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a checkpoint dict
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CompressError(f"--weights {path!r}: expected a dict of tensors (a state_dict)")
    return state


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def _non_persistent_buffers(model: nn.Module) -> set[str]:
    """Buffers the model recomputes itself (registered persistent=False, e.g. transformers'
    `embeddings.position_ids`), which older checkpoints still carry: harmless in a weights file."""
    own = model.state_dict().keys()
    return {name for name, _ in model.named_buffers() if name not in own}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str, strict: bool = True) -> None:
    """Strict load (one readable line naming what does not match), except that tensors for the model's
    non-persistent buffers are ignored. strict=False (--non-strict): missing and unexpected keys are listed
    and skipped; a shape mismatch is still an error."""
    own = model.state_dict()
    problems = []
    harmless = sorted(k for k in _non_persistent_buffers(model) if k in state)
    if harmless:
        print(f"note: --weights {path!r}: ignored {_few(harmless)} (buffers the model recomputes itself)")
        state = {k: v for k, v in state.items() if k not in harmless}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if not strict and (missing or unexpected):
        print(
            f"warning: --non-strict: --weights {path!r}: missing {_few(missing) or 'none'}; "
            f"unexpected {_few(unexpected) or 'none'} (left as the factory made them / ignored)"
        )
        state = {k: v for k, v in state.items() if k in own}
        missing = unexpected = []
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_few(shapes)}")
    if problems:
        hint = "" if shapes else " (--non-strict loads the tensors that match and lists the others)"
        raise CompressError(f"--weights {path!r} do not match the model: " + "; ".join(problems) + hint)
    model.load_state_dict(state, strict=strict)


def supported_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def apply_recipe(model: nn.Module, args) -> nn.Module:
    if not supported_layers(model):
        kinds = sorted({type(m).__name__ for m in model.modules() if not list(m.children())})
        raise CompressError(
            f"the model has no nn.Linear or nn.Conv2d layer, nothing to compress (its layers: {', '.join(kinds)})"
        )
    exclude = [s for s in (args.exclude or "").split(",") if s] or None
    try:
        if args.prune is not None:
            extra = {"example_inputs": example_inputs(args)} if args.pattern == "channel" else {}
            if extra and extra["example_inputs"] is None:
                extra = {}
            model, report = pyopt.prune(model, args.prune, pattern=args.pattern, exclude=exclude, **extra)
            print(report)
            # the pruned layers' inference format (before quantize, which turns CSR layers into csr_int8)
            model, report = pyopt.sparsify(model, expected_m=args.expected_m)
            print(report)
        if args.quantize is not None:
            with warnings.catch_warnings():  # said below as the error it is here
                warnings.filterwarnings("ignore", message=r"pyopt\.quantize.*converted no layer")
                model, report = pyopt.quantize(model, mode=args.quantize, exclude=exclude)
            print(report)
            if not any(row["action"] == "quantized" for row in report):  # every layer unsupported
                why = (
                    "; ".join(
                        f"{r['layer']}: {r.get('reason', '')}" for r in report if r["action"] == "skipped"
                    )
                    or "no layer left to quantise"
                )
                raise CompressError(f"--quantize {args.quantize}: no layer could be quantised ({why})")
    except (ValueError, TypeError, NotImplementedError) as e:
        step = "--quantize" if args.prune is None else "--prune/--quantize"
        raise CompressError(f"{step}: {str(e).splitlines()[0]}") from None
    return model


def example_inputs(args):
    """The example input that traces the model for --pattern channel (None: the nn.Sequential path)."""
    if getattr(args, "input_shape", None):
        try:
            shape = [int(v) for v in args.input_shape.split(",")]
        except ValueError:
            raise CompressError(
                f"--input-shape {args.input_shape!r}: expected integers, e.g. 1,3,224,224"
            ) from None
        if not shape or min(shape) < 1:
            raise CompressError(f"--input-shape {args.input_shape!r}: every size must be >= 1")
        return torch.randn(shape)
    if args.calib is not None:
        try:
            data = torch.load(args.calib, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CompressError(
                f"--calib {args.calib!r}: not a weights-only torch file ({type(e).__name__})"
            ) from None
        if isinstance(data, list) and data and not isinstance(data[0], torch.Tensor):
            data = data[0]  # a list of batches: the first one
        if not isinstance(data, (torch.Tensor, tuple, list, dict)):
            raise CompressError(f"--calib {args.calib!r}: expected a tensor, a tuple or a dict of tensors")
        return tuple(data) if isinstance(data, list) else data
    return None


def evaluate(fn: Callable, model: nn.Module, when: str):
    with torch.inference_mode():
        result = fn(model.eval())
    if isinstance(result, dict):
        text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
    else:
        text = f"{result:.4g}" if isinstance(result, float) else str(result)
    print(f"eval {when}: {text}")
    return result


def check_eval(before, after, tolerance: float) -> list[str]:
    """Metrics that moved by more than `tolerance` (relative) between the float and the compressed model.
    The direction that is "better" is unknown (accuracy vs loss), so any large move is reported."""
    pairs = before.items() if isinstance(before, dict) else [("metric", before)]
    after = after if isinstance(after, dict) else {"metric": after}
    moved = []
    for key, b in pairs:
        a = after.get(key)
        if not isinstance(b, (int, float)) or not isinstance(a, (int, float)):
            continue
        change = abs(a - b) / max(abs(b), 1e-12)
        if not change <= tolerance:  # NaN counts as moved
            moved.append(f"{key} {b:.4g} -> {a:.4g} ({(a - b) / max(abs(b), 1e-12):+.0%})")
    return moved


def run(args) -> None:
    if args.prune is None and args.quantize is None:
        raise CompressError("nothing to do: give --prune AMOUNT and/or --quantize MODE")
    if args.prune is not None and not 0.0 <= args.prune < 1.0:
        raise CompressError(f"--prune {args.prune}: the fraction of weights to remove must be in [0, 1)")
    if args.pattern != "unstructured" and args.prune is None:
        raise CompressError(f"--pattern {args.pattern}: needs --prune")
    eval_fn = resolve(args.eval, "--eval") if args.eval else None
    if args.calib is not None:
        if not os.path.isfile(args.calib):
            raise CompressError(f"--calib {args.calib!r}: no such file")
    if args.calib is not None and args.pattern != "channel":
        print(
            f"note: --calib is not needed for --quantize {args.quantize or '(none)'}: activation scales are "
            "computed per token at run time (dynamic), or only weights are quantised; the file is not used"
        )
    model = build_model(args.model)
    load_weights(model, read_state_dict(args.weights), args.weights, strict=not args.non_strict)
    model.eval()
    before = evaluate(eval_fn, model, "before") if eval_fn else None
    model = apply_recipe(model, args)
    if eval_fn:
        moved = check_eval(before, evaluate(eval_fn, model, "after"), args.eval_tolerance)
        if moved:
            bar = "!" * 78
            print(
                f"{bar}\nWARNING: this recipe changed --eval by more than {args.eval_tolerance:.0%}: "
                f"{'; '.join(moved)}.\nThe compressed model may be unusable: prune less, fine-tune after "
                f"pruning (FusedSGD keeps the mask), or exclude the sensitive layers (--exclude).\n{bar}",
                file=sys.stderr,
            )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    pyopt.save(model, args.output)
    before, after = os.path.getsize(args.weights), os.path.getsize(args.output)
    print(f"saved {args.output}: {after / 2**20:.2f} MiB ({before / after:.1f}x smaller than --weights)")
    factory = args.model.split(":")[1]
    print(f"reload with pyopt.load({factory}(), {args.output!r})")
    if args.pattern == "channel":  # the layers are physically smaller now; the file records their shapes
        print(f"note: the file records the pruned shapes: pyopt.load resizes {factory}()'s layers to them")


def main(args) -> int:
    try:
        run(args)
    except CompressError as e:
        print(f"pyopt compress: error: {e}", file=sys.stderr)
        return 2
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="pkg.module:factory returning the float nn.Module")
    parser.add_argument(
        "--weights", required=True, help="state_dict: .safetensors or torch.save (weights only)"
    )
    parser.add_argument(
        "--prune", type=float, default=None, metavar="AMOUNT", help="fraction to prune, e.g. 0.9"
    )
    parser.add_argument(
        "--pattern", default="unstructured", help="unstructured (default), 2:4 or N:M, channel"
    )
    parser.add_argument("--quantize", choices=QUANT_MODES, default=None, help="quantisation mode")
    parser.add_argument("--exclude", default=None, help="comma-separated layer names to leave as they are")
    parser.add_argument(
        "--calib", default=None, help="data file: --pattern channel traces the model on its first batch"
    )
    parser.add_argument(
        "--input-shape",
        default=None,
        help="--pattern channel: trace on a random input of this shape (1,3,32,32)",
    )
    parser.add_argument("--eval", default=None, metavar="MODULE:FN", help="fn(model) -> metric, before/after")
    parser.add_argument(
        "--eval-tolerance", type=float, default=0.1, metavar="FRACTION",
        help="warn loudly when an --eval metric moves by more than this (relative; default 0.1)",
    )  # fmt: skip
    parser.add_argument(
        "--non-strict", action="store_true",
        help="load --weights even with missing / unexpected keys (listed); shapes must still match",
    )  # fmt: skip
    parser.add_argument(
        "--expected-m", type=int, nargs="+", default=None, metavar="M",
        help="rows per call each layer sees in your runs (batch x tokens), for the sparse format choice",
    )  # fmt: skip
    parser.add_argument("-o", "--output", required=True, help="output .safetensors (written by pyopt.save)")
