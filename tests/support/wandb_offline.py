"""Reading an offline W&B run back: the run's transaction log (``run-<id>.wandb``) as the SDK's
own protobuf records. The wandb SDK of this version reads these files in its Go core only
(``wandb sync``), so the framing (LevelDB's log format after a 7-byte W&B header) is read here
and each record parsed with ``wandb.proto.wandb_internal_pb2.Record``."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = b":W&B"
HEADER_SIZE = 7  # ":W&B", a 2-byte magic, a 1-byte version
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    data = path.read_bytes()
    assert data[:4] == HEADER, f"{path} is not a W&B transaction log"
    out, pending, offset = [], b"", HEADER_SIZE
    while offset + 7 <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < 7:  # the block's tail is padding
            offset += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        payload = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def finished(path: Path, timeout: float = 30.0) -> Path:
    """``path`` once its run's ``exit`` record is on disk: wandb's core writes the log in the
    background, and ``run.finish()`` can return before the last bytes land under load."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            kinds = [r.WhichOneof("record_type") for r in records(path)]
        except Exception:  # a record being written: read again
            kinds = []
        if "exit" in kinds or time.monotonic() > deadline:
            return path
        time.sleep(0.1)


def history(path: Path) -> list[dict[str, Any]]:
    """The rows ``run.log`` wrote, each with its ``_step``."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def run_info(path: Path) -> dict[str, str]:
    """The run's entity, project, id and group, as ``wandb.init`` recorded them."""
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            run = record.run
            return {
                "entity": run.entity,
                "project": run.project,
                "id": run.run_id,
                "group": run.run_group,
            }
    raise AssertionError(f"{path} holds no run record")
