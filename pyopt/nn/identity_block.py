"""IdentityBlock: what pyopt.prune_layers puts where it removed a residual block or transformer layer.

It returns the block's input hidden states unchanged, in the form the block returned its output: the tensor
itself, or a tuple (hidden, None, ...) for blocks that return extra outputs (attention weights, caches).
The hidden states are the first positional argument, or the keyword argument `input` names. Registered, so
pyopt.save records the removed block and pyopt.load puts an IdentityBlock in the fresh model's place.
"""

from __future__ import annotations

from torch import nn

from .registry import register_module


@register_module
class IdentityBlock(nn.Module):
    def __init__(
        self, output: str = "tensor", extra_outputs: int = 0, input: int | str = 0, replaces: str = ""
    ):
        super().__init__()
        if output not in ("tensor", "tuple"):
            raise ValueError(f"output must be 'tensor' or 'tuple', got {output!r}")
        if isinstance(extra_outputs, bool) or not isinstance(extra_outputs, int) or extra_outputs < 0:
            raise ValueError(f"extra_outputs must be an int >= 0, got {extra_outputs!r}")
        if isinstance(input, bool) or not isinstance(input, (int, str)):
            raise ValueError(f"input must be a positional index or a keyword name, got {input!r}")
        self.output, self.extra_outputs, self.input, self.replaces = (
            output,
            extra_outputs,
            input,
            str(replaces),
        )

    def forward(self, *args, **kwargs):
        if isinstance(self.input, str) and self.input in kwargs:
            x = kwargs[self.input]
        elif isinstance(self.input, int) and len(args) > self.input:
            x = args[self.input]
        else:
            raise TypeError(
                f"IdentityBlock (removed {self.replaces or 'block'}): no hidden states at input {self.input!r} "
                f"(called with {len(args)} positional and keyword arguments {sorted(kwargs)})"
            )
        return x if self.output == "tensor" else (x,) + (None,) * self.extra_outputs

    def extra_config(self) -> dict:
        return {
            "output": self.output,
            "extra_outputs": self.extra_outputs,
            "input": self.input,
            "replaces": self.replaces,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> IdentityBlock:
        return cls(**cfg)

    def extra_repr(self) -> str:
        return f"removed {self.replaces}" if self.replaces else ""
