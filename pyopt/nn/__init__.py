from .int8_linear import Int8Conv2d, Int8Linear  # noqa: F401
