"""Content-addressed blob store: a blob's name is the sha256 of its bytes. The hub keeps
versions and contributions in one; a worker caches the versions it holds in another."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

from tessera.errors import NotFound

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore(Protocol):
    def put(self, data: bytes) -> str: ...
    def get(self, sha: str) -> bytes: ...
    def path(self, sha: str) -> Path: ...
    def has(self, sha: str) -> bool: ...


class FileBlobStore:
    """Blobs as files ``root/ab/abcdef...``; written to a temp file, then renamed atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _file(self, sha: str) -> Path:
        if not SHA256_RE.match(sha):
            raise NotFound(f"{sha!r} is not a sha256 blob id (64 lowercase hex digits)")
        return self.root / sha[:2] / sha

    def put(self, data: bytes) -> str:
        sha = sha256_hex(data)
        target = self._file(sha)
        if target.exists():
            return sha
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha

    def path(self, sha: str) -> Path:
        target = self._file(sha)
        if not target.exists():
            raise NotFound(f"blob {sha} not found")
        return target

    def get(self, sha: str) -> bytes:
        return self.path(sha).read_bytes()

    def has(self, sha: str) -> bool:
        return self._file(sha).exists()
