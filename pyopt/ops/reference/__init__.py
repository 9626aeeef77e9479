"""The pure-torch kernels of every pyopt:: op (CompositeExplicitAutograd: every device without a native kernel),
one module per op family; also the tests' oracle."""

from . import binary_linear, embedding, int8_linear, quant, sgd, sparse  # noqa: F401
