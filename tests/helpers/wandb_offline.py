"""Read the run config of an offline W&B run from its ``run-*.wandb`` file (no W&B server, no sync).

wandb >= 0.20 has no Python reader; the file is a LevelDB-style log (7-byte header, 32 KiB blocks of
records: crc32, length, type) of ``wandb_internal_pb2.Record`` protobufs."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> list[bytes]:
    data, pos, out, part = path.read_bytes(), _HEADER, [], b""
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            part = chunk
        elif kind == _MIDDLE:
            part += chunk
        elif kind == _LAST:
            out.append(part + chunk)
        else:
            break
    return out


def run_config(run_dir: Path) -> dict[str, Any]:
    """The config an offline run under ``run_dir/wandb/`` sent, as W&B stores it (``_wandb`` left out)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    config: dict[str, Any] = {}
    for raw in records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        items = (
            record.config.update if kind == "config" else record.run.config.update if kind == "run" else []
        )
        for item in items:
            config[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    config.pop("_wandb", None)
    return config
