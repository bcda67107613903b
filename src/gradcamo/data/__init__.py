"""OME-Zarr reading helpers and the synthetic dataset generator used by the demo and tests."""
