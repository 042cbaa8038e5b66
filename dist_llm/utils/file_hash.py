"""SHA-256 of a file's content: for checkpoint manifests and for the inputs data preparation caches on."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Bytes read per step: memory stays small whatever the file size (data preparation's peak memory is
# tested), and hashing runs as fast as with 8 MiB reads (0.37 vs 0.38-0.40 s for 500 MB, ad-hoc A/B).
_CHUNK = 1 << 16


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's content, read in chunks into one reused buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()
