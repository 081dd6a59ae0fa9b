from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, List

import pytest

from helpers import NatsServer


@pytest.fixture
def nats() -> Iterator[NatsServer]:
    """A real nats-server for this test."""
    server = NatsServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def replicas() -> Iterator[List[Any]]:
    """Replicas a test opened; closed at teardown (even when the test failed), newest first."""
    opened: List[Any] = []
    try:
        yield opened
    finally:
        for replica in reversed(opened):
            try:
                replica._native.close()  # the blocking close works for sync and aio replicas alike
            except Exception:
                pass


@pytest.fixture
def db_dir(tmp_path: Path) -> Path:
    return tmp_path
