"""The gradcamo ONNX contract (format version 1): names shared by exporter and scorer.

Nothing here imports torch or onnxruntime.
"""

FORMAT_VERSION = 1

IMAGE = "image"
TARGET = "target"
LOGITS = "logits"
ACTIVATIONS = "activations"
GRADIENTS = "gradients"
INPUT_NAMES = (IMAGE, TARGET)
OUTPUT_NAMES = (LOGITS, ACTIVATIONS, GRADIENTS)
BATCH_AXIS = "batch"
LATENT_CODE = "z"
"""Output of an autoencoder's encoder graph and input of its decoder graph (their image is :data:`IMAGE`)."""
LATENT_GRADIENT = "latent_gradient"
"""Output of a Latent Shift graph (inputs :data:`LATENT_CODE`, :data:`TARGET`; outputs :data:`LOGITS` and this):
d logits[n, target_n] / d z[n] through the decoder and the classifier."""
META_LATENT_SHIFT = "gradcamo.latent_shift"
"""Metadata key of a Latent Shift graph's description (JSON with ``format`` :data:`LATENT_SHIFT_FORMAT`)."""
LATENT_SHIFT_FORMAT = "gradcamo-latent-shift"

PREDICTED_CLASS = -1
"""Value of ``target`` that selects the argmax class of each sample."""

META_PREFIX = "gradcamo."
META_FORMAT_VERSION = "gradcamo.format_version"
META_TARGET_LAYER = "gradcamo.target_layer"
META_SPATIAL_DIMS = "gradcamo.spatial_dims"
META_TARGET_LAYOUT = "gradcamo.target_layout"
"""How the target layer's output was read (JSON: ``layout`` nchw|nhwc|tokens, ``decided_by``, and for tokens
``token_grid`` and ``prefix_tokens``); the graph's activations are channels-first whatever it says."""
META_INPUT_SHAPE = "gradcamo.input_shape"
META_CLASS_NAMES = "gradcamo.class_names"
META_PREPROCESSING = "gradcamo.preprocessing"
META_VALIDATION = "gradcamo.validation"
META_TORCH_VERSION = "gradcamo.torch_version"
META_WEIGHTS_SHA256 = "gradcamo.weights_sha256"
META_GRADCAMO_VERSION = "gradcamo.version"
META_CHANNEL_NAMES = "gradcamo.channel_names"
"""Optional: JSON list of the names of the model's input channels (``export --channel-names``), which
``score`` matches to a store's ``omero.channels[].label``."""
REQUIRED_METADATA = (
    META_FORMAT_VERSION,
    META_TARGET_LAYER,
    META_SPATIAL_DIMS,
    META_INPUT_SHAPE,
    META_CLASS_NAMES,
)
