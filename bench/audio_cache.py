"""`--audio-cache DIR` (bench/load.py): the caller's speech (espeak-ng) and the emulated voice (Piper) kept as the
bytes a run made, so that a host without espeak-ng or Piper (a bigger box for `--server-cpus`, say) replays the
same audio a run elsewhere made, and runs on two machines are driven by the same bytes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path


def cached_audio(cache: Path | None, key: str, make: Callable[[], bytes]) -> bytes:
    """`make()`'s bytes, kept in `cache` (when given) under a name drawn from `key`."""
    if cache is None:
        return make()
    path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.raw"
    if path.exists():
        return path.read_bytes()
    data = make()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # whole or absent: three emulators and the generator may share the folder
    return data
