"""Embedding models with --references: K cosine-similarity logits, as pytorch-grad-cam's SimilarityToConceptTarget.

``SimilarityToConceptTarget`` is defined in pytorch-grad-cam's tutorial "Pixel Attribution
for embeddings", not in the package; it is copied below as the tutorial writes it and given
to the library's ``GradCAM`` as each sample's target.
"""

import json
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM

from gradcamo import contract
from gradcamo.cam import crop_cam, gradcamo_score
from gradcamo.cli import main
from gradcamo.exporter.loading import hash_weights
from gradcamo.exporter.references import CosineSimilarityHead
from tests.refusals import assert_refused

EMBEDDER_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def embedder(dim=6):
        torch.manual_seed(11)
        return nn.Sequential(
            nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, dim),
        )
    """
)
SHAPE = (2, 16, 16)


class SimilarityToConceptTarget:
    """pytorch-grad-cam's target for embeddings (from its tutorial): cosine similarity to a concept's features."""

    def __init__(self, features):
        self.features = features

    def __call__(self, model_output):
        cos = torch.nn.CosineSimilarity(dim=0)
        return cos(model_output, self.features)

REFERENCES = np.random.default_rng(4).standard_normal((3, 6))


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embedding")
    (folder / "emb.py").write_text(EMBEDDER_SOURCE)
    np.save(folder / "refs.npy", REFERENCES)
    output = folder / "model.onnx"
    code = main(["export", f"{folder / 'emb.py'}:embedder", "-l", "2", "-s", "2,16,16", "--references",
                 str(folder / "refs.npy"), "-o", str(output)])
    assert code == 0
    namespace = {}
    exec(EMBEDDER_SOURCE, namespace)
    return folder, output, namespace["embedder"]().eval()


def test_references_give_cosine_similarity_logits_and_the_librarys_cams(embedder):
    _, output, model = embedder
    metadata = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    assert json.loads(metadata[contract.META_CLASS_NAMES]) == ["ref_0", "ref_1", "ref_2"]
    assert metadata[contract.META_TARGET_LAYER] == "2"
    generator = np.random.default_rng(6)
    image = generator.standard_normal((4, *SHAPE)).astype(np.float32)
    mask = generator.random((4, *SHAPE[1:])) < 0.3
    targets = np.array([0, 1, 2, 1])
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    logits, activations, gradients = session.run(None, {"image": image, "target": targets})
    references = torch.tensor(REFERENCES, dtype=torch.float32)
    with torch.no_grad():
        embedding = model(torch.from_numpy(image))
    expected = F.cosine_similarity(embedding[:, None, :], references[None], dim=2)
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-6)

    cam = GradCAM(model=model, target_layers=[model[2]])
    try:
        library = cam(input_tensor=torch.from_numpy(image),
                      targets=[SimilarityToConceptTarget(references[k]) for k in targets])
        library_gradients = cam.activations_and_grads.gradients[0].numpy()
    finally:
        cam.activations_and_grads.release()
    np.testing.assert_allclose(gradients, library_gradients, atol=1e-6 * np.abs(library_gradients).max())
    ours = crop_cam(activations, gradients, SHAPE[1:], convention="pytorch-grad-cam")
    np.testing.assert_allclose(ours, library, atol=1e-5)
    expected_scores = gradcamo_score(library, mask)[2]
    assert np.isfinite(expected_scores).sum() >= 3
    np.testing.assert_allclose(gradcamo_score(ours, mask)[2], expected_scores, atol=1e-5)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_reference_tables_name_the_logits(embedder, tmp_path, suffix):
    folder, _, _ = embedder
    table = pd.DataFrame(REFERENCES, columns=[f"f{i}" for i in range(6)])
    table.insert(0, "name", ["mitotic", "apoptotic", "normal"])
    path = tmp_path / f"refs{suffix}"
    table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path)
    output = tmp_path / "m.onnx"
    assert main(["export", f"{folder / 'emb.py'}:embedder", "-l", "2", "-s", "2,16,16", "--references", str(path),
                 "-o", str(output)]) == 0
    metadata = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    assert json.loads(metadata[contract.META_CLASS_NAMES]) == ["mitotic", "apoptotic", "normal"]
    npy_metadata = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert metadata[contract.META_WEIGHTS_SHA256] == npy_metadata[contract.META_WEIGHTS_SHA256]
    model = embedder[2]
    assert hash_weights(CosineSimilarityHead(model, REFERENCES)) != hash_weights(CosineSimilarityHead(model, REFERENCES[::-1]))


def _npy(path, array):
    np.save(path, array)
    return path


def _csv(path, text):
    path.write_text(text)
    return path


BAD_REFERENCES = [
    ("D mismatch", lambda t: _npy(t / "r.npy", np.ones((3, 5))),
     r"--references: the references have D=5 but the model outputs \(N, 6\), not \(N, 5\) embeddings"),
    ("NaN", lambda t: _npy(t / "r.npy", np.where(np.eye(3, 6) > 0, np.nan, 1.0)),
     r"--references: reference 0 of .*r.npy' holds NaN or infinite values"),
    ("zero vector", lambda t: _npy(t / "r.npy", np.vstack([np.ones(6), np.zeros(6)])),
     r"--references: reference 1 is all zeros"),
    ("not 2D", lambda t: _npy(t / "r.npy", np.ones(6)), r"--references: expected \(K, D\) numbers, got shape \(6,\)"),
    ("no name column", lambda t: _csv(t / "r.csv", "label,a,b\nx,1,2\n"), r"--references: .*r.csv' has no 'name' column"),
    ("text values", lambda t: _csv(t / "r.csv", "name,a,b\nx,1,oops\n"), r"--references: columns of .*r.csv' that are not numbers: b"),
    ("duplicate names", lambda t: _csv(t / "r.csv", "name,a\nx,1\nx,2\n"), r"--references: names in the 'name' column must be unique"),
    ("missing", lambda t: t / "absent.npy", r"--references: file .*absent.npy' not found"),
    ("wrong kind", lambda t: _csv(t / "r.txt", "1 2"), r"--references: expected a .npy, .parquet or .csv file"),
]


@pytest.mark.parametrize("case", BAD_REFERENCES, ids=[c[0] for c in BAD_REFERENCES])
def test_bad_references(case, embedder, tmp_path, capsys):
    folder, _, _ = embedder
    _, make, pattern = case
    (tmp_path / "out").mkdir()
    assert_refused(["export", f"{folder / 'emb.py'}:embedder", "-l", "2", "-s", "2,16,16", "--references",
                    str(make(tmp_path)), "-o", str(tmp_path / "out" / "m.onnx")], pattern, capsys, tmp_path / "out")
