"""Bad input to every command that reads a score dataset, a model file or a store: one line on
stderr, exit code 2, nothing written. (Command-specific cases live beside each command's tests;
docs/reliability.md lists them all.)"""

import shutil

import pytest
import zarr

from gradcamo.cli import main
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_image_store


@pytest.fixture(scope="module")
def scored(tmp_path_factory, model_2d):
    """A tiny image store and its score dataset."""
    root = tmp_path_factory.mktemp("scored")
    store = write_image_store(root / "cells.zarr", *make_cells((40, 36), 4, n_channels=3, radius=5, seed=3))
    assert main(["score", str(store), "-m", str(model_2d), "-o", str(root / "scores"), "-q"]) == 0
    return store, root / "scores"


def _copy(scores, tmp_path, change):
    copy = tmp_path / "copy"
    shutil.copytree(scores, copy)
    change(copy)
    return copy


def _truncate_part(directory):
    part = next(directory.glob("part-*.parquet"))
    part.write_bytes(part.read_bytes()[:100])


NOT_DATASETS = {
    "missing": (lambda s, t: t / "nope", "nope: no such directory"),
    "a file": (lambda s, t: (t / "f.txt").write_text("x") and t / "f.txt", "f.txt: is a file; expected a score dataset"),
    "an empty directory": (lambda s, t: (t / "e").mkdir() or t / "e", "e: not a gradcamo score dataset (it has no _gradcamo.json)"),
    "an image store": (lambda s, t: s[0], "cells.zarr: not a gradcamo score dataset"),
    "an empty manifest": (lambda s, t: _copy(s[1], t, lambda d: (d / "_gradcamo.json").write_text("")), "_gradcamo.json: unreadable manifest"),
    "a manifest that is a list": (lambda s, t: _copy(s[1], t, lambda d: (d / "_gradcamo.json").write_text("[1]")), "_gradcamo.json: expected a JSON object, got list"),
    "a truncated part file": (lambda s, t: _copy(s[1], t, _truncate_part), "copy: cannot read its part files"),
}
READERS = {
    "query": lambda d, t: ["query", str(d), "select count(*) from scores", "-o", str(t / "out.csv"), "-f", "csv"],
    "summary": lambda d, t: ["summary", str(d), "-o", str(t / "out.csv"), "-f", "csv"],
    "cams": lambda d, t: ["cams", str(d), "-o", str(t / "out")],
    "report": lambda d, t: ["report", str(d), "-o", str(t / "out.html"), "--gallery", "0"],
}


def _one_line_exit_2(capsys, argv, expected):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err


@pytest.mark.parametrize("kind", sorted(NOT_DATASETS))
@pytest.mark.parametrize("command", sorted(READERS))
def test_a_path_that_is_no_score_dataset(tmp_path, capsys, scored, command, kind):
    make, expected = NOT_DATASETS[kind]
    dataset = make(scored, tmp_path)
    _one_line_exit_2(capsys, READERS[command](dataset, tmp_path), expected)
    assert not list(tmp_path.glob("out*"))


def _plain_array(path):
    zarr.create_array(str(path), shape=(4, 4), dtype="uint16")
    return path


def _cut_store_metadata(store, tmp_path):
    copy = tmp_path / "cut.zarr"
    shutil.copytree(store, copy)
    (copy / "zarr.json").write_text((copy / "zarr.json").read_text()[:30])
    return copy


NOT_INSPECTABLE = {
    "missing file": (lambda s, t: t / "absent.onnx", "model file"),
    "missing store": (lambda s, t: t / "absent.zarr", "absent.zarr: no such file or directory"),
    "empty file": (lambda s, t: (t / "m.onnx").write_bytes(b"") or t / "m.onnx", "m.onnx: not an ONNX model"),
    "a directory that is no store": (lambda s, t: (t / "d").mkdir() or t / "d", "d: OME-Zarr group not found"),
    "a score dataset": (lambda s, t: s[1], "scores: OME-Zarr group not found"),
    "a part file": (lambda s, t: next(s[1].glob("part-*.parquet")), "not an ONNX model"),
    "a plain Zarr array": (lambda s, t: _plain_array(t / "a.zarr"), "a.zarr: is a plain Zarr array"),
    "truncated store metadata": (lambda s, t: _cut_store_metadata(s[0], t), "cut.zarr: unreadable metadata (JSONDecodeError"),
}


@pytest.mark.parametrize("kind", sorted(NOT_INSPECTABLE))
def test_inspect_of_something_it_cannot_read(tmp_path, capsys, scored, kind):
    make, expected = NOT_INSPECTABLE[kind]
    _one_line_exit_2(capsys, ["inspect", str(make(scored, tmp_path))], expected)


def test_inspect_check_of_a_model_file_is_refused(tmp_path, capsys, model_2d):
    """--check verifies a store's chunks: on a model file it would check nothing and exit 0."""
    _one_line_exit_2(capsys, ["inspect", str(model_2d), "--check"], "--check: lists the missing chunks of a store")


OUTPUTS_THAT_ARE_FILES = {
    "score": lambda s, m, f: ["score", str(s[0]), "-m", str(m), "-o", str(f)],
    "cams": lambda s, m, f: ["cams", str(s[1]), "-o", str(f)],
    "summary": lambda s, m, f: ["summary", str(s[1]), "-o", str(f / "x.csv"), "-f", "csv"],
    "query": lambda s, m, f: ["query", str(s[1]), "select 1", "-o", str(f / "x.csv"), "-f", "csv"],
}


@pytest.mark.parametrize("command", sorted(OUTPUTS_THAT_ARE_FILES))
def test_an_output_in_place_of_a_file_or_under_one(tmp_path, capsys, scored, model_2d, command):
    occupied = tmp_path / "occupied"
    occupied.write_text("keep me")
    code = main(OUTPUTS_THAT_ARE_FILES[command](scored, model_2d, occupied))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "occupied" in err, err
    assert occupied.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]


SCORE_OPTIONS = {
    "model is a directory": (lambda s, m: [str(s[0]), "-m", str(s[1])], "is a directory; expected an .onnx file"),
    "input is the model file": (lambda s, m: [str(m), "-m", str(m)], "m.onnx: OME-Zarr group not found"),
    "empty channel in --channels": (lambda s, m: [str(s[0]), "-m", str(m), "--channels", "0,,1"], "--channels: expected comma-separated channel indices or names, got '0,,1'"),
    "negative channel": (lambda s, m: [str(s[0]), "-m", str(m), "--channels", "-1,0,1"], "--channels: [-1] out of range"),
    "class index out of range": (lambda s, m: [str(s[0]), "-m", str(m), "--target", "7"], "--target: class index 7 out of range 0..2"),
    "negative threads": (lambda s, m: [str(s[0]), "-m", str(m), "--threads", "0"], "--threads: expected a whole number >= 1, got 0"),
    "negative timepoint": (lambda s, m: [str(s[0]), "-m", str(m), "--timepoint", "-1"], "--timepoint: expected a whole number >= 0"),
}


@pytest.mark.parametrize("case", sorted(SCORE_OPTIONS))
def test_score_options_and_paths_out_of_range(tmp_path, capsys, scored, model_2d, case):
    make, expected = SCORE_OPTIONS[case]
    _one_line_exit_2(capsys, ["score", *make(scored, model_2d), "-o", str(tmp_path / "out")], expected)
    assert not (tmp_path / "out").exists()


EXPORT_VALUES = {
    "NaN mean": (["--mean", "nan,1"], "--mean: every value must be a finite number, got [nan, 1.0]"),
    "infinite std": (["--std", "inf,1"], "--std: every value must be a finite number, got [inf, 1.0]"),
}


@pytest.mark.parametrize("case", sorted(EXPORT_VALUES))
def test_export_preprocessing_values_that_are_not_numbers(tmp_path, capsys, case):
    factory = tmp_path / "nets.py"
    factory.write_text("from torch import nn\n\ndef small():\n    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), "
                       "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))\n")
    extra, expected = EXPORT_VALUES[case]
    argv = ["export", f"{factory}:small", "-l", "1", "-s", "2,16,16", "-o", str(tmp_path / "m.onnx"), *extra]
    _one_line_exit_2(capsys, argv, expected)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["score", "in.zarr", "-m", "m.onnx", "-o", "out", "--batch-size", "abc"],
         "error: Invalid value for '--batch-size': "),
        (["report", "scores", "-o", "r.html", "--gallery", "1.5"], "error: Invalid value for '--gallery': "),
        (["score"], "error: Missing argument 'inputs'. (see gradcamo score --help)"),
        (["scor"], "error: No such command 'scor'. Did you mean 'score'? (see gradcamo --help)"),
        (["cams", "scores", "-o", "out", "--bogus"], "error: No such option: --bogus (see gradcamo cams --help)"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1 and captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_no_command_shows_the_help(capsys):
    assert main([]) == 2
    assert "Usage: gradcamo [OPTIONS] COMMAND" in capsys.readouterr().out
