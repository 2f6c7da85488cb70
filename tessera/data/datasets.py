"""Dataset versions as content: a manifest of files (relative path, sha256, size) and the Merkle
root over it, which is the version's id.

The same files give the same id on any machine: paths are POSIX and relative to the dataset's
folder, leaves are sorted by path, and a leaf hashes its path with its file's sha256
(``sha256(0x00 || len(path) || path || file sha256)``); two children hash as
``sha256(0x01 || left || right)``, and an odd node is carried up unchanged. Reading a folder takes
every regular file under it but hidden ones (a name starting with ``.``, at any depth) and
symbolic links, which could point out of it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera.errors import DataError

MAX_FILES = 100_000  # files in one dataset version
MAX_PATH = 512  # characters of one relative path
CHUNK = 1 << 20
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileEntry:
    """One file of a dataset version."""

    path: str  # POSIX, relative to the dataset's folder
    sha256: str
    size: int


def check_path(path: str) -> None:
    """DataError unless ``path`` is a relative POSIX path inside the dataset (no ``..``, no
    leading ``/``, no empty or hidden parts, printable)."""
    parts = path.split("/")
    if (
        not path
        or len(path) > MAX_PATH
        or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
        or not path.isprintable()
        or "\\" in path
    ):
        raise DataError(
            f"file path {path[:80]!r} is not a relative path inside the dataset (POSIX, no '..', "
            f"no hidden parts, at most {MAX_PATH} characters)"
        )


def check_manifest(files: Sequence[FileEntry]) -> None:
    """DataError for an empty or oversized manifest, a bad path or sha256, or a path twice."""
    if not files:
        raise DataError("a dataset needs at least one file")
    if len(files) > MAX_FILES:
        raise DataError(f"a dataset version holds at most {MAX_FILES} files, got {len(files)}; split it")
    seen: set[str] = set()
    for f in files:
        check_path(f.path)
        if not SHA_RE.match(f.sha256) or f.size < 0:
            raise DataError(f"file {f.path!r}: sha256 must be 64 lowercase hex digits and size >= 0")
        if f.path in seen:
            raise DataError(f"file {f.path!r} is listed twice")
        seen.add(f.path)
    folders = {"/".join(f.path.split("/")[:n]) for f in files for n in range(1, f.path.count("/") + 1)}
    clash = sorted(folders & seen)
    if clash:
        raise DataError(f"{clash[0]!r} is listed as a file and as a folder of other files")


def leaf_hash(entry: FileEntry) -> bytes:
    path = entry.path.encode()
    return hashlib.sha256(
        b"\x00" + len(path).to_bytes(4, "big") + path + bytes.fromhex(entry.sha256)
    ).digest()


def merkle_root(files: Iterable[FileEntry]) -> str:
    """The id of a dataset version with these files (order does not matter)."""
    level = [leaf_hash(f) for f in sorted(files, key=lambda f: f.path.encode())]
    if not level:
        raise DataError("a dataset needs at least one file")
    while len(level) > 1:
        pairs = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    return level[0].hex()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_files(root: Path) -> list[Path]:
    """The files of the dataset at ``root`` (a folder, or one file), sorted."""
    if root.is_file() and not root.is_symlink():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root} is neither a file nor a folder; pass the data to register")
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (Path(folder) / d).is_symlink())
        for name in sorted(names):
            path = Path(folder) / name
            if not name.startswith(".") and path.is_file() and not path.is_symlink():
                found.append(path)
    if not found:
        raise DataError(f"no files under {root} (hidden files and links are left out)")
    return sorted(found)


def relative_name(root: Path, path: Path) -> str:
    return path.name if root == path else path.relative_to(root).as_posix()


def read_manifest(root: Path) -> list[FileEntry]:
    """The manifest of the files at ``root``, hashed now."""
    files = [FileEntry(relative_name(root, p), file_sha256(p), p.stat().st_size) for p in dataset_files(root)]
    check_manifest(files)
    return files


def manifest_of(contents: dict[str, bytes]) -> list[FileEntry]:
    """The manifest of files held in memory (path -> bytes), e.g. a transform's output."""
    files = [FileEntry(p, hashlib.sha256(b).hexdigest(), len(b)) for p, b in sorted(contents.items())]
    check_manifest(files)
    return files


def check_folder(root: Path, dataset_id: str) -> list[FileEntry]:
    """The manifest of ``root``, DataError unless its root is ``dataset_id`` (the version a worker
    was told to train on is the data it holds)."""
    files = read_manifest(root)
    found = merkle_root(files)
    if found != dataset_id:
        raise DataError(
            f"the data at {root} is dataset version {found[:16]}, not {dataset_id[:16]}: it changed since "
            "it was registered; register the new files as a new version (tessera data add)"
        )
    return files
