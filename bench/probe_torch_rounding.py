"""Which rounding rule do torch's own quantizers follow on this machine?  (No pyopt needed.)

    python bench/probe_torch_rounding.py [cpu|cuda]       (ATEN_CPU_CAPABILITY=avx2 ... to try CPU paths)

Quantizes values next to .5 ties (per tensor and per channel, qint8, zero point 3) with torch and counts,
for each candidate formula, the elements where torch disagrees with it; the rule torch follows shows 0.
Measured so far (README "Rounding rules"): torch 2.13 CPU (AMD EPYC): per tensor fma(x, inv, zp), per channel
rne(fl(x*inv) + zp); torch 2.11+cu130 CPU (Intel Xeon, every ATEN_CPU_CAPABILITY): rne(fl(x*inv)) + zp for
both; torch 2.11 CUDA: rne(x / scale in float64) + zp for both.
"""

import os
import sys
import warnings

import torch

warnings.filterwarnings("ignore", message=".*quantize.*deprecated")
SCALES = [0.0371, 2.0**-7, 1.7e-3, 0.1, 3.3, 0.05123456789, 0.0113]
ZP = 3


def ties(scale: float, n: int, gen: torch.Generator) -> torch.Tensor:
    k = torch.randint(-120, 120, (n,), dtype=torch.float64, generator=gen)
    base = ((k + 0.5) * scale).float()
    return torch.cat([base, base.nextafter(base + 1), base.nextafter(base - 1)])


def candidates(x: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
    s32 = torch.tensor(scale, dtype=torch.float32)
    inv = 1.0 / s32
    p = x * inv  # float32 product, rounded
    out = {
        "fma(x,inv,zp)": (x.double() * inv.double() + ZP).float().round(),  # x*inv exact in float64
        "rne(fl(x*inv)+zp)": (p + ZP).round(),
        "rne(fl(x*inv))+zp": p.round() + ZP,
        "rne(fl(x/s))+zp": (x / s32).round() + ZP,
        "rne(x/s_f64)+zp": (x.double() / scale).round().float() + ZP,
        "round_half_away(x*inv)+zp": torch.sign(p) * torch.floor(p.abs() + 0.5) + ZP,
    }
    return {k: v.clamp(-128, 127) for k, v in out.items()}


def main() -> None:
    dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    gen = torch.Generator().manual_seed(0)
    x = torch.stack([ties(s, 2000, gen) for s in SCALES])
    per_tensor = torch.stack(
        [
            torch.quantize_per_tensor(x[c].to(dev), s, ZP, torch.qint8).int_repr().cpu()
            for c, s in enumerate(SCALES)
        ]
    ).float()
    sc, zps = torch.tensor(SCALES, dtype=torch.float64), torch.full((len(SCALES),), ZP)
    per_channel = (
        torch.quantize_per_channel(x.to(dev), sc.to(dev), zps.to(dev), 0, torch.qint8)
        .int_repr()
        .cpu()
        .float()
    )
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "auto")
    print(f"torch {torch.__version__} on {dev} (ATEN_CPU_CAPABILITY={cap}), {x.numel()} values near ties")
    for name, got in (("per tensor", per_tensor), ("per channel", per_channel)):
        counts = {}
        for c, s in enumerate(SCALES):
            for rule, v in candidates(x[c], s).items():
                counts[rule] = counts.get(rule, 0) + int((v != got[c]).sum())
        print(f"  {name:12s} disagreements: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
