"""Writing files and directories so that a reader (or a resumed run) never sees half of one."""

import contextlib
import os
import pathlib
import shutil
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path, *, temporary=None) -> Iterator[pathlib.Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The final name.
    temporary : str or os.PathLike, optional
        The name written first, in the same directory; default ``.<name>.tmp-<pid>``.

    Whatever happens inside the block, the temporary file does not outlive it: on an
    error (or a kill before the rename) ``path`` keeps its old content, or stays absent.

    Examples
    --------
    >>> import tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(target) as temporary:
    ...     _ = temporary.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = pathlib.Path(path)
    temporary = pathlib.Path(temporary) if temporary else path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_directory(output) -> Iterator[pathlib.Path]:
    """Yield a hidden sibling directory to write; rename it to ``output`` only when all is written.

    An existing ``output`` is replaced (check first that it may be); on an error the staging
    directory is removed and ``output`` is left as it was.
    """
    output = pathlib.Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
