"""Plates on object storage: read over HTTP and from S3 (moto's server, through s3fs), with a
server that drops connections for a while, unreachable servers and missing objects."""

import json
import os
import re
import shutil
import subprocess
import sys

import fsspec.config
import pandas as pd
import pytest

from gradcamo.cli import main
from gradcamo.data import remote
from gradcamo.data.read import discover_images, open_image
from gradcamo.data.synthetic import make_cells
from gradcamo.data.write import write_plate
from gradcamo.scorer.sink import read_scores
from tests.stores import Dropper, http_server, s3_environment, s3_filesystem, s3_server, upload

KEY = ["Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber", "target_class"]


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    fields = {(row, column): [make_cells((48, 48), 6, n_channels=3, radius=5, seed=7 * column + ord(row))]
              for row in "AB" for column in (1, 2)}
    return write_plate(tmp_path_factory.mktemp("www") / "plate.zarr", fields, name="P", chunks=(24, 24))


@pytest.fixture
def fast_retries(monkeypatch):
    """Retry pauses of milliseconds: the retries are counted, not timed."""
    monkeypatch.setattr(remote, "RETRY_PAUSE_SECONDS", 0.001)


@pytest.fixture(scope="module")
def s3_endpoint(plate):
    with s3_server() as endpoint:
        upload(endpoint, plate, "screen", "plate.zarr")
        yield endpoint


@pytest.fixture
def s3_configured(monkeypatch, s3_endpoint):
    """This process configured as a user would with FSSPEC_S3_ENDPOINT_URL and AWS keys."""
    for key, value in s3_environment(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint})
    return s3_endpoint


def _inspect(capsys, url):
    code = main(["inspect", url, "--json"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(output):
    return read_scores(output).to_pandas().sort_values(KEY).reset_index(drop=True)


def _assert_rows(output, expected):
    """``output`` holds ``expected``'s rows; floats to 1e-6 (float32 sums made in another process
    may differ in the last bit)."""
    pd.testing.assert_frame_equal(_rows(output), expected.reset_index(drop=True), check_exact=False, rtol=1e-6)


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory, plate, model_2d):
    output = tmp_path_factory.mktemp("local") / "scores"
    assert main(["score", str(plate), "-m", str(model_2d), "-o", str(output), "--target", "all", "-q"]) == 0
    return _rows(output)


def test_inspect_lists_a_plate_over_http(plate, capsys):
    with http_server(plate.parent) as url:
        code, out, err = _inspect(capsys, f"{url}/plate.zarr")
    assert code == 0, err
    images = json.loads(out)
    assert [(i["plate"], i["well"], i["image"]) for i in images] == [
        ("P", "A01", "plate.zarr/A/1/0"), ("P", "A02", "plate.zarr/A/2/0"),
        ("P", "B01", "plate.zarr/B/1/0"), ("P", "B02", "plate.zarr/B/2/0"),
    ]


def test_inspect_lists_a_plate_from_s3(s3_configured, capsys):
    code, out, err = _inspect(capsys, "s3://screen/plate.zarr")
    assert code == 0, err
    assert [i["well"] for i in json.loads(out)] == ["A01", "A02", "B01", "B02"]


def test_anonymous_access_as_to_a_public_bucket(plate, s3_endpoint, monkeypatch, capsys):
    upload(s3_endpoint, plate, "public", "plate.zarr", public=True)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint, "anon": True})
    code, out, err = _inspect(capsys, "s3://public/plate.zarr")
    assert code == 0, err
    assert len(json.loads(out)) == 4


def test_dropped_connections_are_retried_and_reads_match(plate, fast_retries):
    dropper = Dropper(remote.RETRIES)
    with http_server(plate.parent, dropper=dropper) as url:
        source = open_image(discover_images(f"{url}/plate.zarr")[0])
        remote_image, remote_labels = source.image[...], source.labels[...]
    local = open_image(discover_images(plate)[0])
    assert len(dropper.dropped) == remote.RETRIES
    assert (remote_image == local.image[...]).all() and (remote_labels == local.labels[...]).all()


def test_a_server_that_keeps_dropping_is_one_line_exit_2(plate, fast_retries, capsys):
    dropper = Dropper(100, pattern=re.compile(r"/plate.zarr/zarr.json$"))
    with http_server(plate.parent, dropper=dropper) as url:
        code, out, err = _inspect(capsys, f"{url}/plate.zarr")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: {url}/plate.zarr: cannot be read (ServerDisconnectedError")
    dropped = len(dropper.dropped)  # each read of the root metadata was tried 1 + RETRIES times
    assert dropped and dropped % (remote.RETRIES + 1) == 0


@pytest.mark.parametrize("where", ["http://127.0.0.1:9/plate.zarr", "missing"])
def test_unreachable_or_missing_remote_stores_are_one_line_exit_2(plate, model_2d, fast_retries, capsys, tmp_path,
                                                                  where):
    with http_server(plate.parent) as url:
        location = where if where.startswith("http") else f"{url}/missing.zarr"
        code = main(["score", location, "-m", str(model_2d), "-o", str(tmp_path / "scores"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {location}: " + ("cannot be read" if where.startswith("http") else "OME-Zarr group not found"))
    assert not (tmp_path / "scores").exists()


def test_a_missing_bucket_is_one_line_exit_2(s3_configured, capsys):
    code, _, err = _inspect(capsys, "s3://no-such-bucket/plate.zarr")
    assert code == 2 and err == "error: s3://no-such-bucket/plate.zarr: OME-Zarr group not found or not a Zarr group\n"


def test_score_over_http_with_dropped_chunk_reads_gives_the_local_rows(plate, model_2d, local_rows, tmp_path,
                                                                        fast_retries, capsys):
    dropper = Dropper(2 * remote.RETRIES)
    with http_server(plate.parent, dropper=dropper) as url:
        code = main(["score", f"{url}/plate.zarr", "-m", str(model_2d), "-o", str(tmp_path / "scores"),
                     "--target", "all", "-q"])
    assert code == 0, capsys.readouterr().err
    assert len(dropper.dropped) == 2 * remote.RETRIES
    _assert_rows(tmp_path / "scores", local_rows)


def test_score_from_s3_as_a_user_runs_it_through_a_dropping_proxy(plate, model_2d, local_rows, s3_endpoint, tmp_path):
    """The command in its own process, configured by environment variables only; the proxy
    drops the first chunk requests (s3fs and botocore retry them)."""
    dropper = Dropper(3)
    with http_server(upstream=s3_endpoint, dropper=dropper) as proxy:
        result = subprocess.run(
            [sys.executable, "-m", "gradcamo", "score", "s3://screen/plate.zarr", "-m", str(model_2d),
             "-o", str(tmp_path / "scores"), "--target", "all", "-q"],
            env={**os.environ, **s3_environment(proxy)}, capture_output=True, text=True,
        )
    assert result.returncode == 0, result.stderr
    assert len(dropper.dropped) == 3
    _assert_rows(tmp_path / "scores", local_rows)


def test_a_plate_field_missing_from_the_bucket_fails_its_unit_and_is_retried(s3_configured, plate, model_2d,
                                                                             local_rows, tmp_path, capsys):
    """``inspect`` names it (exit 2); ``score`` scores the other fields (exit 3) and, once the
    field is there, a re-run scores it alone."""
    upload(s3_configured, plate, "gaps", "plate.zarr")
    filesystem = s3_filesystem(s3_configured)
    filesystem.rm("gaps/plate.zarr/B/1/0", recursive=True)
    code, _, err = _inspect(capsys, "s3://gaps/plate.zarr")
    assert code == 2 and "plate.zarr/B/1/0" in err and err.count("\n") == 1
    argv = ["score", "s3://gaps/plate.zarr", "-m", str(model_2d), "-o", str(tmp_path / "scores"), "--target", "all",
            "-q"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert err.startswith("failed: plate.zarr/B/1/0 (opening): s3://gaps/plate.zarr/B/1/0: image group not found")
    assert "error: 1 of 4 work units failed" in err
    _assert_rows(tmp_path / "scores", local_rows[local_rows.Metadata_Well != "B01"])
    filesystem.put(str(plate / "B/1/0"), "gaps/plate.zarr/B/1/0", recursive=True)
    assert main(argv) == 0
    assert "(3 of 4 work units resumed" in capsys.readouterr().out
    _assert_rows(tmp_path / "scores", local_rows)


def test_a_damaged_chunk_object_on_s3_fails_its_unit_only(s3_configured, plate, model_2d, local_rows, tmp_path,
                                                          capsys):
    upload(s3_configured, plate, "damaged", "plate.zarr")
    s3_filesystem(s3_configured).pipe("damaged/plate.zarr/A/2/0/s0/c/1/0/1", b"\x00no zstd frame\xff" * 8)
    code = main(["score", "s3://damaged/plate.zarr", "-m", str(model_2d), "-o", str(tmp_path / "scores"),
                 "--target", "all", "-q"])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith("failed: plate.zarr/A/2/0 (whole image): RuntimeError: Zstd decompression error")
    assert "(unreadable chunk: plate.zarr/A/2/0/s0/c/1/0/1)" in err.splitlines()[0]
    _assert_rows(tmp_path / "scores", local_rows[local_rows.Metadata_Well != "A02"])


GONE = "A/2/0/s0/c/1/0/1"
MISSING = ("failed: plate.zarr/A/2/0 (whole image): MissingChunkError: plate.zarr/A/2/0/s0 chunk c/1/0/1 is missing; "
           "the store is incomplete (copy it again), or pass --missing-chunks zeros if it is sparse on purpose")


def _ours(err):
    """gradcamo's lines on stderr (not the test server's tracebacks of connections the client reset)."""
    return [line for line in err.splitlines() if line.startswith(("failed: ", "missing: ", "error: "))]


def test_an_image_chunk_the_server_answers_404_for_fails_its_unit_without_retries(plate, model_2d, local_rows,
                                                                                 tmp_path, capsys):
    """The same as a chunk file not copied: the unit fails, named; the 404 is asked once by the unit and
    once by the search for the unit's bad chunks, never retried; ``inspect --check`` (a HEAD per chunk:
    HTTP cannot be listed) lists it."""
    copy = shutil.copytree(plate, tmp_path / "www" / "plate.zarr")
    (copy / GONE).unlink()
    watch = Dropper(0, pattern=re.compile(f"/plate.zarr/{GONE}$"))
    with http_server(copy.parent, dropper=watch) as url:
        code = main(["score", f"{url}/plate.zarr", "-m", str(model_2d), "-o", str(tmp_path / "scores"),
                     "--target", "all", "-q"])
        assert code == 3 and _ours(capsys.readouterr().err)[0] == MISSING
        assert len(watch.requested) == 2
        _assert_rows(tmp_path / "scores", local_rows[local_rows.Metadata_Well != "A02"])
        code, out, err = _inspect(capsys, f"{url}/plate.zarr")
        assert code == 0 and "missing_chunks" not in out
        assert main(["inspect", f"{url}/plate.zarr", "--check"]) == 3
    assert _ours(capsys.readouterr().err)[0] == f"missing: plate.zarr/{GONE}"


def test_an_image_chunk_missing_from_s3_fails_its_unit_and_check_lists_it(s3_configured, plate, model_2d,
                                                                          local_rows, tmp_path, capsys):
    """S3 answers NoSuchKey: the unit fails, named; ``inspect --check`` lists the bucket once per image."""
    upload(s3_configured, plate, "holes", "plate.zarr")
    s3_filesystem(s3_configured).rm(f"holes/plate.zarr/{GONE}")
    assert main(["score", "s3://holes/plate.zarr", "-m", str(model_2d), "-o", str(tmp_path / "scores"),
                 "--target", "all", "-q"]) == 3
    assert _ours(capsys.readouterr().err)[0] == MISSING
    _assert_rows(tmp_path / "scores", local_rows[local_rows.Metadata_Well != "A02"])
    assert main(["inspect", "s3://holes/plate.zarr", "--check"]) == 3
    assert _ours(capsys.readouterr().err) == [f"missing: plate.zarr/{GONE}", "error: 1 image chunk missing in 1 image; "
                                              "copy the store again (score fails their work units), or score with "
                                              "--missing-chunks zeros if it is sparse on purpose"]
