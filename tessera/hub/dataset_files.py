"""The hub's side of the commons' data for training and evaluation: the files of the dataset
versions it holds, read from its blob store (a ``tessera.data.mixture.DatasetFiles``). A private
version's files are not here (its manifest is None); a version still uploading cannot be used."""

from __future__ import annotations

from tessera.blobs import BlobStore, sha256_hex
from tessera.data.datasets import FileEntry
from tessera.errors import DataError
from tessera.hub.state import State
from tessera.hub.tables import Dataset


class StoredFiles:
    def __init__(self, state: State, store: BlobStore) -> None:
        self.state, self.store = state, store

    def manifest(self, dataset_id: str) -> list[FileEntry] | None:
        with self.state.reading() as s:
            d = s.get(Dataset, dataset_id)
            if d is None:
                raise DataError(
                    f"no dataset version {dataset_id} on this hub; check the recipe's data.datasets"
                )
            if not d.stored:
                return None
            if d.state != "ready":
                raise DataError(
                    f"dataset version {dataset_id[:16]} is still uploading; its owner resumes it with "
                    "tessera data add"
                )
            return [FileEntry(path, sha, size) for path, sha, size in d.files]

    def private(self, dataset_id: str) -> bool:
        with self.state.reading() as s:
            d = s.get(Dataset, dataset_id)
            return d is not None and not d.stored

    def contents(self, dataset_id: str, files: list[FileEntry]) -> dict[str, bytes]:
        contents = {}
        for f in files:
            data = self.store.get(f.sha256)
            if sha256_hex(data) != f.sha256:
                raise DataError(f"file {f.path} of dataset {dataset_id[:16]} is corrupted in the hub's store")
            contents[f.path] = data
        return contents
