"""Idle onnxruntime threads: sleep (the scorer's setting) vs spin, end to end, in one run.

    python benchmarks/spinning.py [--shape 5,16,48,48] [--repeats 3]

EfficientNet3dSmall (many small ops) scored end to end on a small 3D plate with three
thread policies, round-robin: ``sleep`` (``session.intra_op.allow_spinning`` 0, what the
scorer uses), ``spin`` (1, onnxruntime's default) and ``spin+stop`` (spin during a run, stop
as it returns: ``session.force_spinning_stop`` 1). Each policy replaces the scorer's
session factory for its runs (in-process worker), so everything else is the scorer's own.
"""

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import plates  # noqa: E402

from gradcamo.scorer import session as scorer_session  # noqa: E402
from gradcamo.scorer.pipeline import score  # noqa: E402

POLICIES = {
    "sleep": {"session.intra_op.allow_spinning": "0"},
    "spin": {"session.intra_op.allow_spinning": "1"},
    "spin+stop": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},
}


def session_factory(entries):
    """A stand-in for :func:`gradcamo.scorer.session.create_session` (CPU) with these config entries."""
    def create_session(model_bytes, *, device="auto", threads=None):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return create_session


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="5,16,48,48")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    import gradcamo
    from gradcamo.models import EfficientNet3dSmall

    shape = tuple(int(v) for v in args.shape.split(","))
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="gradcamo-spinning-"))
    torch.manual_seed(0)
    model = scratch / "efficientnet3d.onnx"
    gradcamo.export_model(EfficientNet3dSmall(in_channels=shape[0], num_classes=4).eval(), "head", shape, model,
                          validate=False)
    plate = scratch / "plate.zarr"
    cells = plates.write_grid_plate(plate, wells=4, fields_per_well=1, field_shape=(32, 192, 192), spacing=32,
                                    chunks=(32, 192, 192), n_channels=shape[0])
    original = scorer_session.create_session
    seconds = {name: [] for name in POLICIES}
    try:
        for _ in range(args.repeats):
            for name, entries in POLICIES.items():
                scorer_session.create_session = session_factory(entries)
                started = time.perf_counter()
                score([str(plate)], str(model), tempfile.mkdtemp(dir=scratch), batch_size=8)
                seconds[name].append(time.perf_counter() - started)
    finally:
        scorer_session.create_session = original
    for name, times in seconds.items():
        print(f"{name:10s} {cells / np.median(times):7.1f} cells/s (median of {len(times)}), "
              f"{cells / np.median(times) / (cells / np.median(seconds['sleep'])):.2f} x sleep")


if __name__ == "__main__":
    main()
