"""gradcamo: measure how much of a classifier's Grad-CAM attention falls on each cell.

``import gradcamo`` stays light: each part (the exporter needs torch) is imported on first use.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "export_model": "gradcamo.exporter",
    "read_model_info": "gradcamo.model_file",
    "score": "gradcamo.scorer.pipeline",
    "read_scores": "gradcamo.scorer.sink",
    "export_autoencoder": "gradcamo.exaggerate.autoencoder",
    "read_autoencoder": "gradcamo.exaggerate.autoencoder",
    "encode": "gradcamo.exaggerate.encode",
    "import_loaddata": "gradcamo.data.importer",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gradcamo' has no attribute {name!r}")
