"""Scoring half of gradcamo: needs onnxruntime, never torch."""
