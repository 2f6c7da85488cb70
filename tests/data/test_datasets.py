"""Dataset versions as content (tessera.data.datasets), the built-in transforms and licences."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tessera.data.datasets import FileEntry, check_folder, check_path, merkle_root, read_manifest
from tessera.data.licences import licence, refusal
from tessera.data.transforms import transform
from tessera.errors import ConfigError, DataError

pytestmark = pytest.mark.timeout(60)


def entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path, hashlib.sha256(data).hexdigest(), len(data))


def write(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def test_the_root_is_the_documented_merkle_tree() -> None:
    a, b, c = entry("a.txt", b"one"), entry("b/c.txt", b"two"), entry("d", b"")

    def leaf(e: FileEntry) -> bytes:
        p = e.path.encode()
        return hashlib.sha256(b"\0" + len(p).to_bytes(4, "big") + p + bytes.fromhex(e.sha256)).digest()

    def node(x: bytes, y: bytes) -> bytes:
        return hashlib.sha256(b"\1" + x + y).digest()

    assert merkle_root([a]) == leaf(a).hex()
    assert merkle_root([b, a]) == node(leaf(a), leaf(b)).hex()  # sorted by path: order does not matter
    assert merkle_root([c, a, b]) == node(node(leaf(a), leaf(b)), leaf(c)).hex()  # the odd one carried up


def test_the_same_files_give_the_same_id_anywhere_and_any_change_another(tmp_path: Path) -> None:
    files = {"docs/a.md": b"# a\n", "docs/b.md": b"b" * 1000, "top.txt": b"top"}
    here = write(tmp_path / "here", files)
    there = write(tmp_path / "elsewhere" / "copy", files)
    write(there, {".git/config": b"x", "docs/.hidden": b"y"})  # hidden files are not part of it
    (there / "link").symlink_to(here / "top.txt")  # nor are links
    root = merkle_root(read_manifest(here))
    assert merkle_root(read_manifest(there)) == root
    assert check_folder(there, root)
    (there / "docs/b.md").write_bytes(b"b" * 999 + b"c")
    with pytest.raises(DataError, match="changed since it was registered"):
        check_folder(there, root)
    shutil.rmtree(there)
    write(there, {**{k.replace("a.md", "A.md"): v for k, v in files.items()}})  # a renamed file
    assert merkle_root(read_manifest(there)) != root


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a//b", "a/./b", ".hidden", "a\\b", "a\nb", ""])
def test_paths_outside_the_dataset_are_refused(path: str) -> None:
    with pytest.raises(DataError, match="not a relative path"):
        check_path(path)


FILES = {"a.py": b"import os\n", "b.py": b"x = 1\n", "c.md": b"# doc\n", "d.py": b"import os\n"}


def test_filter_dedupe_and_split() -> None:
    inputs = [("ab" * 32, FILES)]
    assert sorted(transform("filter").apply(inputs, {"include": ["*.py"], "contains": "^import"})) == [
        "a.py",
        "d.py",
    ]
    assert sorted(transform("dedupe").apply(inputs, {})) == ["a.py", "b.py", "c.md"]
    many = [("cd" * 32, {f"f{i}": str(i).encode() for i in range(200)})]
    train = transform("split").apply(many, {"fraction": 0.25})
    held = transform("split").apply(many, {"fraction": 0.25, "part": "held_out"})
    assert set(train) | set(held) == set(many[0][1]) and not set(train) & set(held)
    assert 20 < len(held) < 80 and transform("split").apply(many, {"fraction": 0.25}) == train
    both = transform("dedupe").apply([("ab" * 32, FILES), ("cd" * 32, FILES)], {})
    assert sorted(both) == ["abababababab/a.py", "abababababab/b.py", "abababababab/c.md"]


def test_annotations_point_at_the_files_they_describe() -> None:
    lines = [
        json.dumps({"describes": "a.py", "text": "imports os"}),
        json.dumps({"describes": "c.md", "text": "a doc"}),
    ]
    out = transform("annotate").apply([("ab" * 32, FILES)], {"annotations": "\n".join(lines)})
    records = [json.loads(line) for line in out["annotations.jsonl"].decode().splitlines()]
    assert records[0]["describes_sha256"] == hashlib.sha256(FILES["a.py"]).hexdigest()
    with pytest.raises(DataError, match="describes 'z.py', which is not a file of the inputs"):
        transform("annotate").apply(
            [("ab" * 32, FILES)], {"annotations": json.dumps({"describes": "z.py", "text": "?"})}
        )
    recorded = transform("annotate").recorded({"annotations": "\n".join(lines)})
    assert recorded["annotations"].startswith("sha256:") and not transform("annotate").deterministic


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("filter", {"pattern": "*.py"}, "has no parameters .'pattern'."),
        ("filter", {"min_bytes": "10"}, "min_bytes must be int"),
        ("filter", {"min_bytes": True}, "min_bytes must be int"),
        ("filter", {"include": "*.py"}, "include must be list.str."),
        ("split", {"fraction": None}, "fraction must be float"),
        ("filter", {"contains": "("}, "is not a regular expression"),
        ("split", {"fraction": 1.5}, "fraction must be above 0"),
        ("filter", {"include": ["*.none"]}, "leaves no file"),
        ("reverse", {}, "unknown transform"),
    ],
)
def test_bad_parameters_are_refused_by_name(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        transform(name).apply([("ab" * 32, FILES)], params)


def test_licences_say_what_they_allow() -> None:
    assert refusal("CC-BY-4.0", "commercial") is None
    assert "allows only research use" in (refusal("CC-BY-NC-4.0", "commercial") or "")
    assert not licence("CC-BY-ND-4.0").derivatives
    with pytest.raises(ConfigError, match="use an SPDX id from"):
        licence("my-own")
