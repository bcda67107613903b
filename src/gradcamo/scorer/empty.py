"""The one rule that flags a run whose maps are mostly empty (``cam_empty``: the CAM is zero everywhere)."""

EMPTY_MAPS_KEY = "empty_maps"
"""Count of rows with an empty map, in a run's ``counts`` (``_gradcamo.json``) and in ``summary``."""


def empty_maps_warning(empty, rows) -> str | None:
    """A one-line warning when more than half of ``rows`` maps are empty, else None.

    Many empty maps mean the target layer's gradient vanishes (a layer after the last use of
    what the logits depend on, a ViT's last block, a dead head) rather than cells the model ignores.
    """
    if not rows or 2 * empty <= rows:
        return None
    return (f"warning: {empty} of {rows} maps are empty (cam_empty, grad_camo NaN): the target layer's gradient "
            "is zero for most cells; export an earlier layer (`gradcamo layers` lists candidates)")
