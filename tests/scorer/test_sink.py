"""The Parquet dataset: schema, atomic parts, resume, refusal of foreign or other-parameter data, lock."""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from gradcamo.errors import InputError
from gradcamo.scorer.causal import CausalSpec
from gradcamo.scorer.sink import LOCK, MANIFEST, SCORE_SCHEMA, ScoreDataset, make_table, read_scores

PROVENANCE = {"model_sha256": "ab" * 32, "target_layer": "layer4", "convention": "raw"}
PARAMETERS = {"model_sha256": "ab" * 32, "targets": [-1], "inputs": ["a.zarr"]}


def rows(n, first_object=1):
    """``n`` rows of plausible score columns."""
    generator = np.random.default_rng(first_object)
    inside = generator.random(n)
    return {
        "Metadata_Plate": ["P1"] * n, "Metadata_Well": ["B03"] * n,
        "Metadata_Site": np.zeros(n, np.int32), "Metadata_Image": ["plate.zarr/B/3/0"] * n,
        "Metadata_ObjectNumber": np.arange(first_object, first_object + n),
        "centroid_z": [None] * n, "centroid_y": generator.random(n), "centroid_x": generator.random(n),
        "object_voxels": np.full(n, 80), "target_class": np.ones(n, np.int32),
        "predicted_class": np.zeros(n, np.int32), "target_name": ["b"] * n,
        "logit_target": generator.random(n), "prob_target": generator.random(n),
        "cam_inside": inside, "cam_total": inside * 2, "grad_camo": np.full(n, 0.5),
        "cam_empty": np.zeros(n, bool), "edge_padded": np.zeros(n, bool), "pad_fraction": np.zeros(n),
        "method": ["gradcam"] * n, "mask_fraction": np.full(n, 0.25), "enrichment": np.full(n, 2.0),
        "rank_accuracy": generator.random(n), "pointing_hit": [True, None, False][:1] * n,
        "missing_chunks": np.zeros(n, bool),
    }


def test_tables_follow_the_design_schema_and_read_back_with_duckdb(tmp_path):
    with ScoreDataset.open(tmp_path / "s", PARAMETERS) as dataset:
        dataset.write_part("u1", make_table(rows(3), provenance=PROVENANCE))
        dataset.write_part("u2", make_table({}, provenance=PROVENANCE))
        dataset.finish({"rows": 3})
    table = read_scores(tmp_path / "s")
    assert table.schema.remove_metadata().equals(SCORE_SCHEMA)
    assert table.schema.metadata[b"gradcamo.target_layer"] == b"layer4"
    assert table.num_rows == 3
    via_duckdb = duckdb.sql(f"select convention, count(*) from read_parquet('{tmp_path}/s/*.parquet') group by 1")
    assert via_duckdb.fetchall() == [("raw", 3)]
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert manifest["parameters"] == PARAMETERS and manifest["counts"] == {"rows": 3} and manifest["finished"]
    assert sorted(os.listdir(tmp_path / "s")) == [MANIFEST, "part-u1.parquet", "part-u2.parquet"]


def test_resume_keeps_parts_and_drops_damaged_ones(tmp_path):
    with ScoreDataset.open(tmp_path, PARAMETERS) as dataset:
        dataset.write_part("u1", make_table(rows(3), provenance=PROVENANCE))
        dataset.write_part("u2", make_table(rows(2, 10), provenance=PROVENANCE))
    damaged = tmp_path / "part-u2.parquet"
    damaged.write_bytes(damaged.read_bytes()[:100])
    (tmp_path / ".tmp-part-u3.parquet").write_bytes(b"half")
    with ScoreDataset.open(tmp_path, PARAMETERS) as dataset:
        assert dataset.completed_units() == {"u1"}
    assert not damaged.exists() and not (tmp_path / ".tmp-part-u3.parquet").exists()


def test_other_parameters_are_refused_unless_overwrite(tmp_path):
    with ScoreDataset.open(tmp_path, PARAMETERS) as dataset:
        dataset.write_part("u1", make_table(rows(3), provenance=PROVENANCE))
    other = {**PARAMETERS, "targets": [0, 1]}
    with pytest.raises(InputError, match=r"other parameters \(targets\).*--overwrite"):
        with ScoreDataset.open(tmp_path, other):
            pass
    assert (tmp_path / "part-u1.parquet").exists()
    with ScoreDataset.open(tmp_path, other, overwrite=True) as dataset:
        assert dataset.completed_units() == set()
    assert json.loads((tmp_path / MANIFEST).read_text())["parameters"] == other


def test_a_causal_refusal_names_only_what_differs_and_the_cli_way_out(tmp_path):
    """A run records the causal checks only when asked for one; ``ablation: false`` is what a run without
    them did. The refusal names the parameters that differ and says ``--overwrite`` (no Python spelling)."""
    deletion = {**PARAMETERS, **CausalSpec(deletion_steps=4).parameters()}
    with ScoreDataset.open(tmp_path, deletion) as dataset:
        dataset.write_part("u1", make_table(rows(3), provenance=PROVENANCE))
    for other, changed in [(PARAMETERS, "deletion_steps"),
                           ({**PARAMETERS, **CausalSpec(ablation=True).parameters()}, "ablation, deletion_steps"),
                           ({**deletion, "deletion_curves": True}, "deletion_curves")]:
        with pytest.raises(InputError) as refused:
            with ScoreDataset.open(tmp_path, other):
                pass
        assert str(refused.value) == (f"output {tmp_path}: holds rows made with other parameters ({changed}); "
                                      "pass --overwrite to replace them or choose another directory")
    with ScoreDataset.open(tmp_path, {**PARAMETERS, "deletion_steps": 4}) as dataset:  # the same run, resumed
        assert dataset.completed_units() == {"u1"}


def test_a_dataset_of_the_previous_release_resumes_with_the_defaults_and_its_old_parts_are_redone(tmp_path, caplog):
    """The previous release recorded neither site_base nor channel_mapping and wrote no missing_chunks column."""
    old_columns = {k: v for k, v in rows(3).items() if k != "missing_chunks"}
    old_schema = SCORE_SCHEMA.remove(SCORE_SCHEMA.get_field_index("missing_chunks"))
    pq.write_table(make_table(old_columns, provenance=PROVENANCE, schema=old_schema), tmp_path / "part-u1.parquet")
    (tmp_path / MANIFEST).write_text(json.dumps({"version": 1, "parameters": PARAMETERS, "finished": None}))
    position = [{"match": "position", "channels": [{"model": None, "index": 0, "label": "DNA"}]}]
    by_name = [{"match": "name", "channels": [{"model": "DNA", "index": 1, "label": "DNA"}]}]
    for changed, later in [("site_base", {"site_base": 1, "channel_mapping": position}),
                           ("channel_mapping", {"site_base": 0, "channel_mapping": by_name})]:
        with pytest.raises(InputError, match=rf"other parameters \({changed}\)"):
            with ScoreDataset.open(tmp_path, {**PARAMETERS, **later}):
                pass
    now = {**PARAMETERS, "site_base": 0, "channel_mapping": position}
    with ScoreDataset.open(tmp_path, now) as dataset:
        assert dataset.completed_units() == set()
    assert "part-u1.parquet has other columns (written by an earlier release" in caplog.text
    assert json.loads((tmp_path / MANIFEST).read_text())["parameters"] == now


def test_foreign_files_are_never_touched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"notes\.txt"):
        with ScoreDataset.open(tmp_path, PARAMETERS, overwrite=True):
            pass
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "scores").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        with ScoreDataset.open(tmp_path / "scores", PARAMETERS):
            pass


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    with ScoreDataset.open(tmp_path, PARAMETERS):
        with pytest.raises(InputError, match="another gradcamo run"):
            with ScoreDataset.open(tmp_path, PARAMETERS):
                pass
    assert not (tmp_path / LOCK).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with ScoreDataset.open(tmp_path, PARAMETERS) as dataset:
        assert dataset.completed_units() == set()


def test_a_written_part_is_complete_parquet(tmp_path):
    with ScoreDataset.open(tmp_path, PARAMETERS) as dataset:
        dataset.write_part("u1", make_table(rows(5), provenance=PROVENANCE))
    assert pq.read_metadata(tmp_path / "part-u1.parquet").num_rows == 5


def test_the_docs_list_every_column():
    """docs/score.md's column table names every column of the schema, in its order."""
    text = (pathlib.Path(__file__).parents[2] / "docs" / "score.md").read_text()
    start = text.index("| column | type | meaning |")
    table = text[start:text.index("\n\n", start)]
    listed = [name for row in table.splitlines()[2:] if row.startswith("|")
              for name in re.findall(r"`(\w+)`", row.split("|")[1])]
    assert listed == [*SCORE_SCHEMA.names, "feature_0"]
