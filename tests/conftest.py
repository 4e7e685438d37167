"""Shared fixtures. Test helpers live in tests/support (importable as ``support``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# offline: weave's documented switch keeps it from trying to send error reports out
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")

pytest_plugins = ["support.fixtures"]


def pytest_collection_modifyitems(items: list) -> None:
    """Tests that need the real model (the ``backend`` fixture, directly or through another)
    are marked ``model``: ``make test-fast`` leaves them out."""
    for item in items:
        if "backend" in getattr(item, "fixturenames", ()):
            item.add_marker("model")
