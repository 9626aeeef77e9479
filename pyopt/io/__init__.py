"""Files: pyopt.save / pyopt.load (safetensors + JSON, never pickle) and pyopt.export_onnx."""

from .onnx_export import export_onnx
from .serialization import load, save

__all__ = ["export_onnx", "load", "save"]
