"""Read back an offline W&B run: the records of its ``run-<id>.wandb`` transaction log.

wandb 0.31 writes every run, online or offline, as a LevelDB-format log of
``wandb.proto.wandb_internal_pb2.Record`` protobufs; ``wandb sync`` replays exactly these records.
Its Python reader (``wandb.sdk.internal.datastore``) was removed in wandb 0.30 (the reading now
lives in the Go ``wandb-core``, which has no dump command), so this test helper splits the log
into records itself (format: github.com/google/leveldb/blob/main/doc/log_format.md, with W&B's
7-byte file header) and decodes each one with wandb's own protobuf schema.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[: len(HEADER)] == HEADER, f"{path} is not a W&B transaction log"
    records, pending, pos = [], b"", len(HEADER)
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # block trailer: zero padding
            pos += BLOCK - pos % BLOCK
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:  # preallocated tail
            break
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"bad checksum in {path}"
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _item_key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def _history_value(item: wandb_internal_pb2.HistoryItem) -> Any:
    """History values come typed (``integer``, ``number``, ...) or as JSON."""
    kind = item.WhichOneof("value")
    if kind is None:
        return json.loads(item.value_json)
    if kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)


@dataclass
class OfflineRun:
    """What an offline run holds, decoded from its records."""

    path: Path
    run: wandb_internal_pb2.RunRecord
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None

    @classmethod
    def read(cls, run_dir: Path) -> OfflineRun:
        (log,) = run_dir.glob("run-*.wandb")
        records = read_records(log)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        out = cls(path=run_dir, run=run)
        for item in run.config.update:
            out.config[_item_key(item)] = json.loads(item.value_json)
        for record in records:
            kind = record.WhichOneof("record_type")
            if kind == "config":
                for item in record.config.update:
                    out.config[_item_key(item)] = json.loads(item.value_json)
            elif kind == "history":
                out.history.append({_item_key(i): _history_value(i) for i in record.history.item})
            elif kind == "summary":
                for item in record.summary.update:
                    out.summary[_item_key(item)] = json.loads(item.value_json)
            elif kind == "exit":
                out.exit_code = record.exit.exit_code
        return out


def offline_runs(wandb_root: Path) -> list[OfflineRun]:
    """Every offline run under a W&B directory, in start order."""
    return [OfflineRun.read(d) for d in sorted(wandb_root.rglob("offline-run-*")) if d.is_dir()]
