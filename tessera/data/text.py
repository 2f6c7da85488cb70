"""Folders of text files as corpora: the default data source, ``tessera.data.text:load``.

Any file is read whose bytes are text (UTF-8 without NUL bytes in its first 8 KiB), whatever
its suffix; binary files are skipped and counted. ``include`` and ``exclude`` take fnmatch
patterns matched against paths relative to the folder (``"*.md"``, ``"docs/*"``). Folders named
like tests (``test``, ``tests``, ...), installed packages and hidden folders are left out. A domain
is a top-level folder; files directly in the folder form the domain ``modules``. The default
corpus is the Python standard library's own source, read from the running interpreter, so
nothing is downloaded. What was read and skipped is logged, and kept as the corpus' ``report``.
"""

from __future__ import annotations

import fnmatch
import os
import sysconfig
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tessera.data.corpus import Corpus, CorpusSettings, Document
from tessera.data.tokens import tokens_for
from tessera.errors import DataError

EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
ROOT_DOMAIN = "modules"
SNIFF_BYTES = 8192


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def domain_of(relative: Path) -> str:
    return relative.parts[0] if len(relative.parts) > 1 else ROOT_DOMAIN


def is_text(head: bytes) -> bool:
    """Text: no NUL byte, and valid UTF-8 but for a character cut at the end of ``head``."""
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return len(head) == SNIFF_BYTES and exc.start >= len(head) - 3
    return True


@dataclass
class FolderScan:
    """The text files under a folder, and what was skipped, by reason."""

    root: Path
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    files: list[Path] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    binary_suffixes: Counter[str] = field(default_factory=Counter)

    def scan(self) -> FolderScan:
        for folder, dirs, names in os.walk(self.root):
            kept = sorted(d for d in dirs if d not in EXCLUDED_DIRS and not d.startswith("."))
            self.skipped["test, package or hidden folders"] += len(dirs) - len(kept)
            dirs[:] = kept  # os.walk descends only into these
            for name in sorted(names):
                path = Path(folder) / name
                if path.is_file():
                    self._consider(path, path.relative_to(self.root).as_posix())
        self.files.sort()
        return self

    def _consider(self, path: Path, posix: str) -> None:
        if self.include and not any(fnmatch.fnmatch(posix, p) for p in self.include):
            self.skipped["files not matching include"] += 1
        elif any(fnmatch.fnmatch(posix, p) for p in self.exclude):
            self.skipped["files matching exclude"] += 1
        elif not is_text(_head(path)):
            self.skipped["binary files"] += 1
            self.binary_suffixes[path.suffix or "(none)"] += 1
        else:
            self.files.append(path)

    def report(self, nbytes: int) -> str:
        text = f"read {len(self.files)} text files ({nbytes / 1e6:.2f} MB) from {self.root}"
        reasons = []
        for reason, n in sorted(self.skipped.items()):
            if not n:
                continue
            detail = ""
            if reason == "binary files":
                detail = " (" + ", ".join(f"{s} {c}" for s, c in self.binary_suffixes.most_common(5)) + ")"
            reasons.append(f"{n} {reason}{detail}")
        return f"{text}; skipped {'; '.join(reasons)}" if reasons else text


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(SNIFF_BYTES)


def list_text_files(root: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[Path]:
    return FolderScan(root, include, exclude).scan().files


def folder_documents(scan: FolderScan) -> list[Document]:
    docs = []
    for path in scan.files:
        rel = path.relative_to(scan.root)
        docs.append(Document(domain_of(rel), rel.as_posix(), path.read_bytes()))
    return docs


def load(
    path: str | None = None,
    context: int = 128,
    num_shards: int = 4,
    domains: list[str] | None = None,
    held_out_fraction: float = 0.05,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    tokenizer: str | None = None,
) -> Corpus:
    """Data factory named in recipes as ``tessera.data.text:load``; no path: the stdlib."""
    root = Path(path).expanduser() if path else stdlib_root()
    settings = CorpusSettings(context, num_shards, held_out_fraction, tuple(domains or ()))
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass a folder of text files")
    scan = FolderScan(root, tuple(include or ()), tuple(exclude or ())).scan()
    docs = folder_documents(scan)
    report = scan.report(sum(len(d.content) for d in docs))
    if not docs:
        raise DataError(
            f"no text files found under {root}: {report}; pass --data with a folder that holds some"
        )
    return Corpus.build(docs, settings, str(root), tokens_for(tokenizer, root), report)
