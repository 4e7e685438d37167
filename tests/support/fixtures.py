"""Session fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.fault_server import FaultServer


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()
