"""gradcamo: measure how much of a classifier's Grad-CAM attention falls on each cell.

``import gradcamo`` stays light: the exporter (which needs torch) is imported on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "export_model", "read_model_info"]


def __getattr__(name):
    if name == "export_model":
        from gradcamo.exporter import export_model

        return export_model
    if name == "read_model_info":
        from gradcamo.model_file import read_model_info

        return read_model_info
    raise AttributeError(f"module 'gradcamo' has no attribute {name!r}")
