"""Exporting half of gradcamo: torch classifier -> ONNX graph with activations and gradients."""

from gradcamo.exporter.export import ExportResult, export_model

__all__ = ["ExportResult", "export_model"]
