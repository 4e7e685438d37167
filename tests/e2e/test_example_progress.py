"""Long examples say what they are doing: the LlamaIndex SFT example used to print nothing for
270 s. This watches its first minutes and stops it (the whole run is ~4-5 minutes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from support.fixtures import REPO


@pytest.mark.slow
def test_llamaindex_sft_example_shows_progress_early():
    process = subprocess.Popen(
        [sys.executable, "-u", str(REPO / "examples" / "llamaindex_sft.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen, started, first_line_after = b"", time.monotonic(), None
    os.set_blocking(process.stdout.fileno(), False)
    try:
        while time.monotonic() - started < 240 and b"1/9" not in seen:
            chunk = process.stdout.read() or b""
            if chunk and first_line_after is None:
                first_line_after = time.monotonic() - started
            seen += chunk
            if process.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        process.kill()
        process.wait()
    text = seen.decode(errors="replace")
    assert first_line_after is not None and first_line_after < 15, text
    assert "starting the local backend" in text and "recording agent runs" in text
    assert "agent runs" in text and "1/9" in text  # the bar counts runs as they finish
