"""`gradcamo import` of a JUMP-like screen (LoadData CSV, per-channel TIFFs, Cells/Nuclei label TIFFs,
1-based sites), scored with features, joined to a CellProfiler-style per-object table and profiled for
pycytominer; bad CSVs refused cleanly."""

import json
import shutil

import duckdb
import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from pycytominer import aggregate
from skimage.measure import regionprops

from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.read import discover_images, open_image
from gradcamo.data.write import write_field, write_plate
from gradcamo.errors import InputError
from gradcamo.scorer.channels import choose_channels
from tests.reference import gradcamo_of, pooled_activations, reference_crops, torch_gradcam
from tests.screens import CHANNELS, PLATE, make_screen, make_site, read_csv, write_csv
from tests.tiny_models import CROP_2D, export_tiny, tiny_classifier

MODEL_CHANNELS = ("Mito", "DNA", "ER")
"""The channels the tiny model was 'trained on', in its order: not the CSV's order."""
KEYS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]
FEATURES = [f"feature_{k}" for k in range(6)]  # the tiny 2D model's target layer has 6 channels


@pytest.fixture(scope="module")
def named_model(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("named") / "m.onnx", 2, channel_names=list(MODEL_CHANNELS))


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    return make_screen(tmp_path_factory.mktemp("screen"))


def run(capsys, *args):
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def rows(output):
    return duckdb.sql(f"select * from read_parquet('{output}/*.parquet') order by all").df()


def cellprofiler_table(truth, objects="Cells"):
    """A CellProfiler-style per-object table made from the label TIFFs: keys, ObjectNumber, AreaShape_Area."""
    records = []
    for (plate, well, site), (_, labels) in truth.items():
        for region in regionprops(labels[objects]):
            records.append({"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site,
                            "ObjectNumber": region.label, "AreaShape_Area": int(region.area)})
    return pd.DataFrame.from_records(records)


def reference_cells(truth):
    """Per cell of the screen, from the TIFFs directly (torch autograd, the model's channel order): its keys,
    Grad-CAMO score and pooled target-layer activations."""
    network, records = tiny_classifier(2), []
    for (plate, well, site), (planes, labels) in truth.items():
        image = np.stack([planes[name] for name in MODEL_CHANNELS])
        cut = list(reference_crops(image, labels["Cells"], CROP_2D))
        reference = torch_gradcam(network, "2", np.concatenate([c[2] for c in cut]), [-1] * len(cut),
                                  mean=[100.0] * 3, std=[300.0] * 3)
        _, _, scores = gradcamo_of(reference, np.stack([c[3] for c in cut]))
        for (cell, *_), value, pooled in zip(cut, scores, pooled_activations(reference)):
            records.append({"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site,
                            "Metadata_ObjectNumber": int(cell), "grad_camo": value,
                            **{f"feature_{k}": v for k, v in enumerate(pooled)}})
    return pd.DataFrame.from_records(records).set_index(KEYS)


def test_a_jump_like_screen_goes_import_score_features_profiles_and_pycytominer(tmp_path, capsys, screen,
                                                                                 named_model):
    """The issue's whole path on one screen: every score and feature equals the torch reference computed from
    the TIFFs, the keys join a CellProfiler per-object table 1:1, and pycytominer aggregates the profiles."""
    csv_path, truth = screen
    code, out, err = run(capsys, "import", csv_path, "-o", tmp_path / "zarr")
    assert code == 0, err
    assert "wrote 4 fields (0 kept from before) of 1 plate" in out
    plate = tmp_path / "zarr" / f"{PLATE}.zarr"
    field = zarr.open_group(str(plate / "B" / "3" / "1"), mode="r")
    assert [c["label"] for c in field.attrs["ome"]["omero"]["channels"]] == list(CHANNELS)
    assert field.attrs["gradcamo"]["site"] == 2
    assert field.attrs["gradcamo"]["files"]["DNA"].endswith("rB03_s2_DNA.tiff")
    assert sorted(field["labels"].attrs["ome"]["labels"]) == ["Cells", "Nuclei"]
    assert field["s0"].compressors  # chunks are compressed
    code, out, _ = run(capsys, "inspect", plate, "--json")
    described = {image["image"]: image for image in json.loads(out)}
    assert described[f"{PLATE}.zarr/B/3/1"]["site"] == 2 and described[f"{PLATE}.zarr/B/3/1"]["well"] == "B03"
    assert described[f"{PLATE}.zarr/B/3/1"]["channels"] == list(CHANNELS)
    assert described[f"{PLATE}.zarr/B/3/1"]["labels"] == "Cells, Nuclei"

    code, out, err = run(capsys, "score", plate, "-m", named_model, "-o", tmp_path / "scores", "--labels", "Cells",
                         "--features", "--threads", 1)
    assert code == 0, err
    assert out.strip().splitlines()[-1].endswith("channels matched by name (Mito=4, DNA=0, ER=1)")
    scores = rows(tmp_path / "scores")
    manifest = json.loads((tmp_path / "scores" / "_gradcamo.json").read_text())
    assert manifest["parameters"]["channel_mapping"] == [{"match": "name", "channels": [
        {"model": "Mito", "index": 4, "label": "Mito"}, {"model": "DNA", "index": 0, "label": "DNA"},
        {"model": "ER", "index": 1, "label": "ER"}]}]
    assert manifest["parameters"]["features"] == len(FEATURES)

    # Every score and feature equals the torch reference computed from the TIFFs directly; the image is the field.
    expected = reference_cells(truth)
    got = scores.set_index(KEYS)
    assert sorted(got.index) == sorted(expected.index)
    got = got.loc[expected.index]
    np.testing.assert_allclose(got.grad_camo, expected.grad_camo, atol=1e-5)
    np.testing.assert_allclose(got[FEATURES], expected[FEATURES], rtol=1e-4, atol=1e-5)
    assert (got.Metadata_Image == [f"{PLATE}.zarr/{w[0]}/{int(w[1:])}/{s - 1}" for _, w, s, _ in got.index]).all()

    # The join with a CellProfiler per-object table is 1:1, with equal object areas.
    cells = cellprofiler_table(truth)
    joined = duckdb.sql(f"""
        select s.Metadata_ObjectNumber, s.object_voxels, c.AreaShape_Area
        from read_parquet('{tmp_path / "scores"}/*.parquet') s
        join cells c on s.Metadata_Plate = c.Metadata_Plate and s.Metadata_Well = c.Metadata_Well
                    and s.Metadata_Site = c.Metadata_Site and s.Metadata_ObjectNumber = c.ObjectNumber
    """).df()
    assert len(joined) == len(scores) == len(cells)
    assert (joined.object_voxels == joined.AreaShape_Area).all()

    # profiles -> pycytominer: one row per cell, the reference's values under CellProfiler names, per-site medians.
    code, _, err = run(capsys, "profiles", tmp_path / "scores", "-o", tmp_path / "profiles.parquet")
    assert code == 0, err
    profiles = pd.read_parquet(tmp_path / "profiles.parquet")
    named = {"grad_camo": "Cells_GradCAMO_grad_camo", **{f: f"Cells_DeepProfile_{k}" for k, f in enumerate(FEATURES)}}
    expected = expected.rename(columns=named)
    np.testing.assert_allclose(profiles.set_index(KEYS).loc[expected.index][list(named.values())], expected,
                               rtol=1e-4, atol=1e-5)
    per_site = aggregate(profiles, strata=KEYS[:3], features="infer").set_index(KEYS[:3]).sort_index()
    medians = expected.groupby(level=KEYS[:3]).median().sort_index()
    assert list(per_site.index) == list(medians.index)
    np.testing.assert_allclose(per_site[list(named.values())], medians, rtol=1e-4, atol=1e-5)


def test_an_interrupted_import_resumes_and_keeps_finished_fields(tmp_path, capsys, screen):
    csv_path, truth = screen
    assert run(capsys, "import", csv_path, "-o", tmp_path / "zarr")[0] == 0
    well = tmp_path / "zarr" / f"{PLATE}.zarr" / "C" / "5"
    kept = (well / "0" / "s0" / "zarr.json").stat().st_mtime_ns
    shutil.rmtree(well / "1")
    (well / ".1.tmp-999-1").mkdir()  # what a killed import leaves
    code, out, err = run(capsys, "import", csv_path, "-o", tmp_path / "zarr")
    assert code == 0, err
    assert "wrote 1 field (3 kept from before)" in out
    assert not list(well.glob(".*tmp*"))
    assert (well / "0" / "s0" / "zarr.json").stat().st_mtime_ns == kept
    field = zarr.open_group(str(well / "1"), mode="r")
    planes, labels = truth[(PLATE, "C05", 2)]
    np.testing.assert_array_equal(field["s0"][:], np.stack([planes[name] for name in CHANNELS]))
    np.testing.assert_array_equal(field["labels/Nuclei/s0"][:], labels["Nuclei"])

    header, records = read_csv(csv_path)
    records[3]["FileName_DNA"] = records[2]["FileName_DNA"]  # C05 site 2 now from other files
    for record in records:  # keep the CSV's relative object paths valid from its new folder
        record["ObjectsPathName_Cells"] = record["ObjectsPathName_Nuclei"] = str(csv_path.parent / "objects")
    write_csv(tmp_path / "other.csv", header, records)
    code, _, err = run(capsys, "import", tmp_path / "other.csv", "-o", tmp_path / "zarr")
    assert code == 2 and "C/5/1: holds a field that was not imported from other.csv line 5" in err


def _bad(case, root, csv_path):
    """Write a broken copy of the screen's CSV (and files) for ``case``; return it and what the error names."""
    header, records = read_csv(csv_path)
    images = csv_path.parent / "images"
    for record in records:
        record["ObjectsPathName_Cells"] = record["ObjectsPathName_Nuclei"] = str(csv_path.parent / "objects")
    if case == "missing column":
        header.remove("Metadata_Site")
        for record in records:
            del record["Metadata_Site"]
        expected = ["no column Metadata_Site"]
    elif case == "missing file":
        records[1]["FileName_ER"] = "gone.tiff"
        expected = ["line 3", "FileName_ER", "gone.tiff does not exist"]
    elif case == "channel shape":
        tifffile.imwrite(root / "small.tiff", np.zeros((30, 30), np.uint16))
        records[0].update(FileName_RNA="small.tiff", PathName_RNA=str(root))
        expected = ["line 2", "small.tiff (RNA) has shape (30, 30)", "(40, 40)"]
    elif case == "label shape":
        tifffile.imwrite(root / "small.tiff", np.zeros((30, 30), np.uint16))
        records[1].update(ObjectsFileName_Nuclei="small.tiff", ObjectsPathName_Nuclei=str(root))
        expected = ["line 3", "small.tiff (Nuclei) has shape (30, 30)"]
    elif case == "duplicate site":
        records[1]["Metadata_Site"] = records[0]["Metadata_Site"]
        expected = ["line 3", f"plate {PLATE}, well B03, site 1 is also on line 2"]
    elif case == "site not an integer":
        records[2]["Metadata_Site"] = "1.5"
        expected = ["line 4", "Metadata_Site '1.5' is not an integer"]
    elif case == "unreadable tiff":
        (root / "broken.tiff").write_bytes(b"II*\x00 not really a TIFF")
        records[3].update(FileName_Mito="broken.tiff", PathName_Mito=str(root))
        expected = ["line 5", "FileName_Mito", "broken.tiff is not a readable TIFF"]
    elif case == "a row too long":
        records[2][None] = ["extra"]
        expected = ["line 4: 17 columns in the header, another number in this row"]
    elif case == "not text":
        bad = root / "bad.csv"
        bad.write_bytes(b"Metadata_Plate,\xff\xfe\n")
        return bad, ["bad.csv: not a readable CSV (UnicodeDecodeError"]
    else:  # a label image of floats
        tifffile.imwrite(root / "float.tiff", np.zeros((40, 40), np.float32))
        records[0].update(ObjectsFileName_Cells="float.tiff", ObjectsPathName_Cells=str(root))
        expected = ["line 2", "float.tiff has dtype float32"]
    bad = root / "bad.csv"
    write_csv(bad, header, records)
    assert images.is_dir()
    return bad, expected


@pytest.mark.parametrize("case", ["missing column", "missing file", "channel shape", "label shape",
                                  "duplicate site", "site not an integer", "unreadable tiff", "float labels",
                                  "a row too long", "not text"])
def test_a_bad_csv_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, screen, case):
    bad, expected = _bad(case, tmp_path, screen[0])
    code, out, err = run(capsys, "import", bad, "-o", tmp_path / "zarr")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: bad.csv")
    for part in expected:
        assert part in err
    assert not (tmp_path / "zarr").exists()


def test_multi_page_tiffs_become_z_stacks_and_base_dir_rebases(tmp_path, capsys):
    planes, labels = make_site((3, 24, 24), 3, seed=5)
    moved = tmp_path / "moved"
    moved.mkdir()
    record = {"Metadata_Plate": "P", "Metadata_Well": "a1", "Metadata_Site": "0"}
    for name, data in [*planes.items(), *labels.items()]:
        tifffile.imwrite(moved / f"{name}.tif", data, photometric="minisblack")  # pages: a z-stack
        prefix = "Objects" if name in labels else ""
        folder = "/gone/screen" if prefix else "s3://cellpainting-gallery/screen"  # JUMP's CSVs give URLs
        record.update({f"{prefix}FileName_{name}": f"{name}.tif", f"{prefix}PathName_{name}": folder})
    write_csv(tmp_path / "load_data.csv", list(record), [record])
    code, _, err = run(capsys, "import", tmp_path / "load_data.csv", "-o", tmp_path / "zarr", "--channels", "mito")
    assert code == 2 and "line 2 FileName_Mito: s3://cellpainting-gallery/screen/Mito.tif is remote" in err
    code, _, err = run(capsys, "import", tmp_path / "load_data.csv", "-o", tmp_path / "zarr", "--objects", "a/b=Cells")
    assert code == 2 and "load_data.csv: object name 'a/b' cannot name a label image" in err
    code, out, err = run(capsys, "import", tmp_path / "load_data.csv", "-o", tmp_path / "zarr",
                         "--base-dir", moved, "--channels", "mito,Hoechst=dna", "--objects", "Nuclei")
    assert code == 0, err
    field = zarr.open_group(str(tmp_path / "zarr" / "P.zarr" / "A" / "1" / "0"), mode="r")
    assert [a["name"] for a in field.attrs["ome"]["multiscales"][0]["axes"]] == ["c", "z", "y", "x"]
    np.testing.assert_array_equal(field["s0"][:], np.stack([planes["Mito"], planes["DNA"]]))
    np.testing.assert_array_equal(field["labels/Nuclei/s0"][:], labels["Nuclei"])
    assert list(field["labels"].attrs["ome"]["labels"]) == ["Nuclei"]
    assert [c["label"] for c in field.attrs["ome"]["omero"]["channels"]] == ["Mito", "Hoechst"]
    assert field.attrs["gradcamo"]["files"]["Hoechst"] == str(moved / "DNA.tif")
    assert field.attrs["gradcamo"]["site"] == 0


def test_channels_by_name_refusals_options_and_position(tmp_path, capsys, screen, named_model, model_2d):
    csv_path, _ = screen
    assert run(capsys, "import", csv_path, "-o", tmp_path / "three", "--channels", "DNA,ER,RNA",
               "--objects", "Cells")[0] == 0
    three = tmp_path / "three" / f"{PLATE}.zarr"
    code, _, err = run(capsys, "score", three, "-m", named_model, "-o", tmp_path / "s1")
    assert code == 2 and f"{PLATE}.zarr/B/3/0: the model expects Mito; the store has DNA, ER, RNA" in err
    assert not (tmp_path / "s1").exists()

    code, _, err = run(capsys, "score", three, "-m", named_model, "-o", tmp_path / "s2", "--channels", "dna,Mito,ER")
    assert code == 2 and "--channels" in err and "no channel 'Mito'" in err

    code, out, err = run(capsys, "score", three, "-m", model_2d, "-o", tmp_path / "s3", "--channels", "rna,0,ER",
                         "--threads", 1)
    assert code == 0, err
    assert out.strip().endswith("channels chosen by --channels")
    mapping = json.loads((tmp_path / "s3" / "_gradcamo.json").read_text())["parameters"]["channel_mapping"]
    assert [(c["index"], c["label"], c["model"]) for c in mapping[0]["channels"]] == [
        (2, "RNA", None), (0, "DNA", None), (1, "ER", None)]

    code, out, err = run(capsys, "score", three, "-m", model_2d, "-o", tmp_path / "s4", "--threads", 1)
    assert code == 0, err
    assert "; channels matched by position (the model names none)" in out


def test_site_base_for_plates_that_record_no_site(tmp_path, capsys, named_model):
    fields = {("B", 3): [make_cells((40, 40), 3, n_channels=3, radius=5, seed=s) for s in (1, 2)]}
    store = write_plate(tmp_path / "plate.zarr", fields, name="P1")
    code, out, err = run(capsys, "score", store, "-m", named_model, "-o", tmp_path / "scores", "--site-base", 1,
                         "--threads", 1)
    assert code == 0, err
    assert "; channels matched by position (the store names none)" in out
    assert set(rows(tmp_path / "scores").Metadata_Site) == {1, 2}
    manifest = json.loads((tmp_path / "scores" / "_gradcamo.json").read_text())
    assert manifest["parameters"]["site_base"] == 1
    code, _, err = run(capsys, "score", store, "-m", named_model, "-o", tmp_path / "other", "--site-base", 2)
    assert code == 2 and err.startswith("error: --site-base: expected 0 or 1, got 2")


def test_export_records_channel_names_and_inspect_shows_them(tmp_path, capsys, named_model):
    code, out, _ = run(capsys, "inspect", named_model, "--json")
    assert code == 0 and json.loads(out)["channel_names"] == list(MODEL_CHANNELS)
    code, out, _ = run(capsys, "inspect", named_model)
    assert "Mito, DNA, ER" in out
    with pytest.raises(ValueError, match="--channel-names: the crop has 3 channels, got 2 names"):
        export_tiny(tmp_path / "bad.onnx", 2, channel_names=["DNA", "ER"])
    with pytest.raises(ValueError, match="unique"):
        export_tiny(tmp_path / "bad.onnx", 2, channel_names=["DNA", "dna", "ER"])


def test_channel_names_that_repeat_are_refused_when_asked_for(tmp_path):
    image, labels = make_cells((20, 20), 2, n_channels=3, radius=4, seed=1)
    write_field(zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=3), image, {"cells": labels},
                channel_names=["DNA", "dna", "ER"])
    source = open_image(discover_images(tmp_path / "img.zarr")[0])
    assert source.channel_labels == ("DNA", "dna", "ER")
    assert choose_channels(source, None, ("er",)).indices == (2,)
    assert choose_channels(source, ["ER", 1, "0"], ()).indices == (2, 1, 0)
    with pytest.raises(InputError, match="several channels named 'DNA'"):
        choose_channels(source, None, ("ER", "DNA"))
