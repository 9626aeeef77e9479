"""Small hand-built models for the channel / layer pruning tests, and the "zeroed original" reference.

The models follow the architectures people prune (torchvision's ResNet BasicBlock / Bottleneck, MobileNetV2's
inverted residual, a concat net, a pre-LN transformer block with attention written both with sdpa and with
matmul + softmax, a BERT encoder from `transformers` built from a config), at sizes that trace in a second.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm / LayerNorm parameters and statistics, so that a wrong slice shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -1, 1)
    return model


class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock
    expansion = 1

    def __init__(self, cin, planes, stride=1):
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


class Bottleneck(nn.Module):  # torchvision.models.resnet.Bottleneck
    expansion = 4

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class TinyResNet(nn.Module):
    """stem -> layer1 (2 blocks, no downsample) -> layer2 (downsample + 1 block) -> pool -> fc."""

    def __init__(self, block=BasicBlock, width=8, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        c = width if block is BasicBlock else width * 4
        first = block(width, width) if block is BasicBlock else block(width, width)
        self.layer1 = nn.Sequential(first, block(c, width))
        self.layer2 = nn.Sequential(block(c, 2 * width, 2), block(2 * width * block.expansion, 2 * width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width * block.expansion, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):  # torchvision.models.mobilenetv2.InvertedResidual, stride 1
    def __init__(self, c, expand):
        super().__init__()
        h = c * expand
        self.conv = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c),
        )  # fmt: skip

    def forward(self, x):
        return x + self.conv(x)


class TinyMobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)),
            InvertedResidual(8, 4),
            InvertedResidual(8, 6),
            nn.Conv2d(8, 12, 3, padding=1, groups=4),  # grouped (not depthwise): the group count stays
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(12, 4))

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(10, 5, 1)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), self.b(x)], 1)
        return self.fc(torch.flatten(self.c(y), 1))


class Attention(nn.Module):
    """q/k/v/o projections, heads split by view; sdpa or matmul + softmax (the "eager" path)."""

    def __init__(self, dim, heads, sdpa=True):
        super().__init__()
        self.num_heads, self.head_dim, self.sdpa = heads, dim // heads, sdpa
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim**0.5, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class TransformerBlock(nn.Module):
    def __init__(self, dim=16, heads=4, ffn=24, sdpa=True):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, sdpa)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    def __init__(self, sdpa=True, layers=2):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.blocks = nn.ModuleList([TransformerBlock(sdpa=sdpa) for _ in range(layers)])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


def tiny_bert(attn="sdpa", layers=2):
    """A BERT encoder from `transformers` (random weights, built from a config: no download)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def bert_inputs(batch=2, seq=7):
    ids = torch.randint(0, 50, (batch, seq), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, seq - 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def zeroed_original(original: nn.Module, report) -> nn.Module:
    """The original model with every removed channel zeroed in every member tensor (weights' rows and
    columns, biases, norm affine parameters, running means; running variances set to 1): its outputs must
    equal the pruned model's, which is what makes the surgery exact."""
    ref = copy.deepcopy(original)
    tensors = dict(ref.named_parameters())
    tensors.update(dict(ref.named_buffers()))
    with torch.no_grad():
        for g in report.groups:
            if g.kept is None:
                continue
            removed = torch.ones(g.size, dtype=torch.bool)
            removed[g.kept] = False
            for m in g.members:
                sel = ((m.channel >= 0) & removed[m.channel.clamp(min=0)]).nonzero().flatten()
                tensors[m.name].index_fill_(m.dim, sel, 1.0 if m.name.endswith("running_var") else 0.0)
    return ref
