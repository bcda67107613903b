"""One check for bad input on the command line: exit code 2, one line on stderr, no traceback, nothing written."""

import re

from gradcamo.cli import main


def assert_refused(argv, pattern, capsys, output_dir):
    """Run ``gradcamo argv``; it must refuse with one line matching ``pattern`` and leave ``output_dir`` empty."""
    code = main(argv)
    error = capsys.readouterr().err.strip()
    assert code == 2, error
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    assert re.search(pattern, error), error
    assert list(output_dir.iterdir()) == []


def written(path, data):
    """``path`` after writing ``data`` (bytes) to it: a bad file for a refusal case."""
    path.write_bytes(data)
    return path
