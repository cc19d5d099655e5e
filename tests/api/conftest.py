"""Fixtures of the API suite: see api_support for the server itself."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import Api, ApiFactory, running_api


@pytest.fixture
def api_factory(tmp_path: Path) -> Iterator[ApiFactory]:
    """Start APIs with their own settings (parse_config data); every one stops at teardown."""
    with contextlib.ExitStack() as stack:
        count = 0

        def make(settings: dict[str, Any] | None = None, **options: Any) -> Api:
            nonlocal count
            count += 1
            return stack.enter_context(running_api(tmp_path / f"api{count}", settings, **options))

        yield make


@pytest.fixture
def api(api_factory: ApiFactory) -> Api:
    return api_factory()


@pytest.fixture
def quiet_server_errors() -> Iterator[None]:
    """For a test that makes the server fail on purpose: its tracebacks are not logged. CPython 3.11
    builds a traceback's ^^^ markers with ast.parse, whose state is not thread-safe there: the server
    thread logging one while pytest parses source to report a failure (or an xfail) can crash pytest
    with "SystemError: AST constructor recursion depth mismatch" (pytest-dev/pytest#10763)."""
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "clusterai.api")]
    before = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, disabled in zip(loggers, before):
            logger.disabled = disabled
