"""Tokenization: bytes by default, or a local tokenizer file; nothing is downloaded.

A tokenizer is a ``tokenizer.json`` (the format of the ``tokenizers`` library, which every
``transformers`` fast tokenizer saves), or a folder holding one, e.g. from
``AutoTokenizer.save_pretrained``. It is read with ``tokenizers``: JSON parsed by its Rust
code, so loading one runs no Python code of its author's. A relative path is taken inside the
data folder, so a data set can carry its tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from tessera.errors import ConfigError, DataError

TOKENIZER_FILE = "tokenizer.json"


class Tokens(Protocol):
    """Turns bytes into token ids and back; ``vocab_size`` bounds the ids."""

    vocab_size: int
    dtype: type[np.generic]

    def encode(self, content: bytes) -> np.ndarray: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokens:
    """Each byte is a token (a vocabulary of 256)."""

    vocab_size = 256
    dtype: type[np.generic] = np.uint8

    def encode(self, content: bytes) -> np.ndarray:
        return np.frombuffer(content, dtype=np.uint8)

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class FileTokens:
    """A ``tokenizers`` tokenizer read from a local ``tokenizer.json``."""

    dtype: type[np.generic] = np.int32

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigError(
                "a tokenizer file needs the tokenizers package: pip install tokenizers"
            ) from exc
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library's own parse error
            raise DataError(f"cannot read tokenizer {path}: {exc}; pass a tokenizers tokenizer.json") from exc
        self.path = path
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, content: bytes) -> np.ndarray:
        ids = self.tokenizer.encode(content.decode("utf-8", errors="replace"), add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))


def data_folder(base: Path) -> Path:
    """The folder of a data path: itself, or the folder of a data file (e.g. a .jsonl)."""
    return base if base.is_dir() else base.parent


def tokenizer_location(path: str, base: Path | None) -> Path:
    """Where ``path`` points: a relative path is inside ``base``'s data folder (not checked to
    exist, so that whether it is allowed is decided before anything is read)."""
    given = Path(path).expanduser()
    if not given.is_absolute() and base is not None:
        given = data_folder(base) / given
    return given


def tokenizer_file(path: str, base: Path | None) -> Path:
    """The ``tokenizer.json`` that ``path`` names (a file, or a folder holding one); relative
    paths are inside ``base`` (the data folder)."""
    given = tokenizer_location(path, base)
    found = given / TOKENIZER_FILE if given.is_dir() else given
    if not found.is_file():
        raise DataError(
            f"tokenizer {path!r} not found (looked for {found}); pass a tokenizer.json or a folder "
            "holding one (e.g. written by a transformers tokenizer's save_pretrained)"
        )
    return found


def tokens_for(tokenizer: str | None, base: Path | None) -> Tokens:
    """Bytes when ``tokenizer`` is None, else the tokenizer file it names."""
    if tokenizer is None:
        return ByteTokens()
    return FileTokens(tokenizer_file(tokenizer, base))
