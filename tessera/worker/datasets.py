"""A provider's side of the commons: registering a folder (or a transform's output) as a dataset
version and uploading only the files the hub lacks, fetching a version's files into a local
cache by content (each file downloaded once, checked against its sha256, whatever version it
belongs to), and deriving a version from others with a built-in transform.

Registering is resumable: the hub answers every registration with the files it still lacks, so
running the same command again after an interruption uploads only those. A private version's
files are hashed here and never sent: the hub gets its id and statistics.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessera.api.client import HubAPI, HubClient
from tessera.api.commons import DatasetFile, DatasetInfo, DatasetRequest, Derivation
from tessera.blobs import FileBlobStore, sha256_hex
from tessera.data.datasets import FileEntry, check_manifest, manifest_of, merkle_root, read_manifest
from tessera.data.transforms import transform
from tessera.errors import DataError, NotFound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Terms:
    """What a provider declares about a dataset version it registers."""

    name: str
    licence: str
    visibility: str = "private"
    description: str = ""
    collective: str | None = None
    threshold_pflop: float | None = None
    threshold_run: str | None = None


def request_for(terms: Terms, files: list[FileEntry], derivation: Derivation | None = None) -> DatasetRequest:
    """The registration of these files under these terms (a private one: id and statistics only)."""
    private = terms.visibility == "private"
    return DatasetRequest(
        name=terms.name,
        licence=terms.licence,
        description=terms.description,
        visibility=terms.visibility,  # type: ignore[arg-type]  # checked by the message
        collective=terms.collective,
        threshold_pflop=terms.threshold_pflop,
        threshold_run=terms.threshold_run,
        files=[] if private else [DatasetFile(path=f.path, sha256=f.sha256, size=f.size) for f in files],
        root=merkle_root(files),
        file_count=len(files),
        nbytes=sum(f.size for f in files),
        derivation=derivation,
    )


def upload_missing(client: HubClient, info: DatasetInfo, read: Mapping[str, Path | bytes]) -> DatasetInfo:
    """Upload the files the hub lacks (``read``: sha256 -> a path or the bytes)."""
    missing = list(info.missing)
    for n, sha in enumerate(missing, 1):
        source = read[sha]
        body = source.read_bytes() if isinstance(source, Path) else source
        info = client.upload_dataset_file(info.dataset_id, sha, body)
        log.info("uploaded file %d of %d (%d bytes) of dataset %s", n, len(missing), len(body), info.name)
    return info


def add_folder(client: HubClient, root: Path, terms: Terms) -> DatasetInfo:
    """Register the files at ``root`` and upload those the hub lacks."""
    files = read_manifest(root)
    info = client.add_dataset(request_for(terms, files))
    paths = {f.sha256: (root / f.path if root.is_dir() else root) for f in files}
    return upload_missing(client, info, paths)


def add_files(
    client: HubClient, contents: dict[str, bytes], terms: Terms, derivation: Derivation
) -> DatasetInfo:
    """Register files held in memory (a transform's output) and upload those the hub lacks."""
    files = manifest_of(contents)
    info = client.add_dataset(request_for(terms, files, derivation))
    return upload_missing(client, info, {sha256_hex(b): b for b in contents.values()})


class DatasetCache:
    """Dataset files kept by content under ``root`` (shared by every version that holds them)."""

    def __init__(self, root: Path) -> None:
        self.blobs = FileBlobStore(root)

    def fetch(self, client: HubAPI, dataset_id: str, only: list[FileEntry] | None = None) -> dict[str, bytes]:
        """The version's files (or ``only`` those), path -> bytes, downloading each one not cached
        yet; the manifest is checked against the id, and each file against its sha256."""
        files = only if only is not None else manifest(client, dataset_id)
        contents = {}
        for f in files:
            if not self.blobs.has(f.sha256):
                data = client.dataset_file(dataset_id, f.sha256)
                if sha256_hex(data) != f.sha256:
                    raise DataError(
                        f"file {f.path} of dataset {dataset_id[:16]} arrived corrupted; fetch it again"
                    )
                self.blobs.put(data)
            contents[f.path] = self.blobs.get(f.sha256)
        return contents


def manifest(client: HubAPI, dataset_id: str, listed: list[DatasetFile] | None = None) -> list[FileEntry]:
    """A version's files as the hub lists them (``listed``, or asked now), checked to be the
    version the id names."""
    listed = client.dataset_files(dataset_id) if listed is None else listed
    files = [FileEntry(f.path, f.sha256, f.size) for f in listed]
    if merkle_root(files) != dataset_id:
        raise DataError(
            f"the hub's list of files of dataset {dataset_id[:16]} is not that version; ask its admin"
        )
    return files


class HubFiles:
    """A worker's ``DatasetFiles``: versions it may read from the hub (their files fetched into
    ``cache`` as its leases need them), and the private version it holds itself (``local``: its
    folder, hashed to the version's id)."""

    def __init__(self, client: HubAPI, cache: DatasetCache, local: Path | None = None) -> None:
        self.client, self.cache = client, cache
        self.local = local
        self.local_files = read_manifest(local) if local is not None else []
        self.local_id = merkle_root(self.local_files) if local is not None else None
        self.manifests: dict[str, list[FileEntry]] = {}  # versions are immutable: asked once each

    def manifest(self, dataset_id: str) -> list[FileEntry] | None:
        """The version's files; None while the hub lists none to this worker (private data, or
        data its provider may not read yet: asked again the next time)."""
        if dataset_id == self.local_id:
            return self.local_files
        if dataset_id not in self.manifests:
            try:
                listed = self.client.dataset_files(dataset_id)
            except NotFound:
                return None
            if not listed:  # its owner asking about a private version the hub holds no files of
                return None
            self.manifests[dataset_id] = manifest(self.client, dataset_id, listed)
        return self.manifests[dataset_id]

    def private(self, dataset_id: str) -> bool:
        """Whether the version is the private one this worker holds (one shard: its copy)."""
        return dataset_id == self.local_id

    def contents(self, dataset_id: str, files: list[FileEntry]) -> dict[str, bytes]:
        if dataset_id == self.local_id and self.local is not None:
            root = self.local
            return {f.path: (root / f.path if root.is_dir() else root).read_bytes() for f in files}
        return self.cache.fetch(self.client, dataset_id, files)


def write_folder(contents: dict[str, bytes], out: Path) -> None:
    """Write a version's files under ``out``, a new or empty folder: every path is checked to
    land inside it before anything is written, and the files go to a temporary folder beside it
    that is renamed into place at the end (an interruption leaves no half-written copy)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an empty folder; write the dataset into a new one")
    check_manifest(manifest_of(contents))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for path, data in contents.items():
            target = (staging / path).resolve()
            if not target.is_relative_to(staging.resolve()):
                raise DataError(f"file path {path!r} would land outside {out}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def derive(
    client: HubClient, cache: DatasetCache, inputs: list[str], name: str, params: dict[str, Any], terms: Terms
) -> tuple[DatasetInfo, dict[str, bytes]]:
    """Make a version from ``inputs`` with the built-in transform ``name`` and register it; its
    files are returned too (a private version's are kept by its owner only). The inputs are
    fetched and checked against their ids before the transform runs."""
    chosen = transform(name)
    chosen.parse(params)  # refused before anything is downloaded
    fetched = [(dataset_id, cache.fetch(client, dataset_id)) for dataset_id in inputs]
    output = chosen.apply(fetched, params)
    derivation = Derivation(
        inputs=inputs,
        transform=name,
        params=chosen.recorded(params),
        code_version=chosen.code_version,
        deterministic=chosen.deterministic,
    )
    return add_files(client, output, terms, derivation), output
