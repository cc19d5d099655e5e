from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from autoscale_support import FakeClock, kill_leftovers


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """Where fake workers write their records; any left running are killed afterwards."""
    directory = tmp_path / "workers"
    directory.mkdir()
    try:
        yield directory
    finally:
        kill_leftovers(directory)
