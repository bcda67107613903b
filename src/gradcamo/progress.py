"""Progress on a terminal: cells done, cells/s and ETA of a run, and of each GPU (silent when quiet)."""

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn,
)
from rich.text import Text


class _RateColumn(ProgressColumn):
    def __init__(self, unit="cells"):
        super().__init__()
        self.unit = unit

    def render(self, task):
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"… {self.unit}/s")


class _Silent:
    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


@contextlib.contextmanager
def cell_progress(enabled, unit="cells") -> Iterator[Progress | _Silent]:
    """Yield a rich Progress writing to stderr (counting ``unit``), or a silent stand-in."""
    if not enabled:
        yield _Silent()
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        yield progress


class RunProgress:
    """A run's line (cells, cells/s, ETA) and, with several ``devices``, one line per device
    (its cells and cells/s: each device's share of the run is not known in advance)."""

    def __init__(self, bar, description, devices=()):
        self._bar = bar
        self._run = bar.add_task(description, total=None)
        self._devices = {device: bar.add_task(f"  {device}", total=None) for device in devices} if len(devices) > 1 \
            else {}

    def advance(self, cells, total, device=None) -> None:
        """``cells`` more done, of about ``total`` in the run (None: not yet known), on ``device``."""
        self._bar.update(self._run, advance=cells, total=total)
        if device in self._devices:
            self._bar.update(self._devices[device], advance=cells)
