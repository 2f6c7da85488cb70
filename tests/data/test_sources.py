"""Data sources: any text by content, include/exclude, shards as asked, the held-out split by
content across views, records (JSON Lines, Parquet, saved Hugging Face data sets), tokenizers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tessera.data import records, text
from tessera.errors import ConfigError, DataError
from tessera.recipe import parse_recipe
from tessera.task import load_data
from tessera.trust import Trust


def words(rng: random.Random, n: int) -> str:
    vocab = ["fn", "let", "mut", "impl", "struct", "match", "loop", "where", "pub", "use", "crate"]
    return " ".join(rng.choice(vocab) + str(rng.randrange(1000)) for _ in range(n))


def write_project(root: Path, files: int = 60) -> None:
    """Sources and docs of another language: suffixes the loader never listed, and binaries."""
    rng = random.Random(0)
    for i in range(files):
        kind = ("src", ".rs") if i % 3 else ("docs", ".adoc")
        path = root / kind[0] / f"part{i}{kind[1]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"// file {i}\n{words(rng, 80)}\n")
    (root / "Makefile").write_text("all:\n\tcargo build\n" * 20)
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)) * 4)
    (root / "src" / "lib.o").write_bytes(bytes(range(256)) * 8)


def test_any_text_file_is_read_by_content_and_binaries_are_reported(tmp_path: Path) -> None:
    write_project(tmp_path)
    corpus = text.load(str(tmp_path), context=16, num_shards=2)
    training = b"".join(a.tobytes() for a in corpus.domains.values()) + corpus.held_out.tobytes()
    assert b"// file 1\n" in training and b"cargo build" in training  # .rs and no suffix
    assert b"IHDR" not in training
    assert "read 61 text files" in corpus.report and "skipped 2 binary files (.png 1, .o 1)" in corpus.report


def test_include_and_exclude_patterns(tmp_path: Path) -> None:
    write_project(tmp_path)
    only_docs = text.load(str(tmp_path), context=16, num_shards=1, include=["docs/*"])
    assert set(only_docs.unit_domain.values()) == {"docs"}
    assert "files not matching include" in only_docs.report
    no_docs = text.load(str(tmp_path), context=16, num_shards=1, exclude=["*.adoc", "Makefile"])
    assert set(no_docs.unit_domain.values()) == {"src"}
    assert "21 files matching exclude" in no_docs.report
    with pytest.raises(DataError, match="no text files.*not matching include"):
        text.load(str(tmp_path), include=["*.zig"])


def test_shards_are_made_as_asked_or_refused(tmp_path: Path) -> None:
    """Two domains and four shards asked: documents are packed into four; fewer documents than
    shards is an error that says what to change."""
    write_project(tmp_path)
    corpus = text.load(str(tmp_path), context=16, num_shards=4)
    assert corpus.shard_names() == ["shard-0", "shard-1", "shard-2", "shard-3"]
    sizes = [len(corpus.shard_tokens(s)) for s in corpus.shard_names()]
    assert max(sizes) < 1.5 * min(sizes)
    small = tmp_path / "src"
    with pytest.raises(DataError, match="fewer than the 100 shards asked; ask for fewer"):
        text.load(str(small), context=16, num_shards=100)


def test_a_subfolder_view_never_trains_on_what_the_whole_holds_out(tmp_path: Path) -> None:
    write_project(tmp_path, files=300)
    hub = text.load(str(tmp_path), context=16, num_shards=1)
    worker = text.load(str(tmp_path / "src"), context=16, num_shards=1)
    held_files = [p for p in (tmp_path / "src").glob("*.rs") if p.read_bytes() in hub.held_out.tobytes()]
    assert len(held_files) >= 3
    worker_training = worker.shard_tokens(None).tobytes()
    for path in held_files:
        assert path.read_bytes() not in worker_training
        assert path.read_bytes() in worker.held_out.tobytes()


def jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows(n: int, seed: int = 0) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [{"text": words(rng, 30), "lang": ["en", "de"][i % 2], "id": i} for i in range(n)]


def test_jsonl_records_with_fields_skips_and_errors(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "notes.jsonl", [*rows(80), {"id": "no text"}, {"text": 3}])
    corpus = records.load(str(data), context=16, num_shards=2, domain_field="lang")
    assert set(corpus.unit_domain.values()) == {"en", "de"}
    assert corpus.report == f"read 80 records from {data}; skipped 2 without text in 'text'"
    assert corpus.shard_names() == ["shard-0", "shard-1"]
    with pytest.raises(DataError, match="no record has text in 'body'.*fields seen"):
        records.load(str(data), text_field="body")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 is not a JSON object"):
        records.load(str(tmp_path / "bad.jsonl"))
    (tmp_path / "notes.txt").write_text("plain")
    with pytest.raises(DataError, match="cannot tell the format"):
        records.load(str(tmp_path / "notes.txt"))
    with pytest.raises(ConfigError, match="format must be one of"):
        records.load(str(data), format="csv")


def test_parquet_and_saved_datasets(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    table = rows(60)
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "part.parquet")
    from_parquet = records.load(str(tmp_path / "part.parquet"), context=16, num_shards=2)
    saved = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_list(table[:50]), "test": Dataset.from_list(table[50:])}).save_to_disk(
        str(saved)
    )
    from_disk = records.load(str(saved), context=16, num_shards=2)
    assert from_disk.report.startswith("read 60 records")
    assert sorted(from_disk.held_out.tobytes().split(b"\n")) == sorted(
        from_parquet.held_out.tobytes().split(b"\n")
    )
    jsonl(tmp_path / "more.jsonl", rows(10, seed=1))
    folder = records.load(str(tmp_path), format="auto", context=16, num_shards=2)
    assert folder.report.startswith("read 70 records")  # the .jsonl and .parquet files in it


def tokenizer_json(folder: Path, corpus: list[str]) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    path = folder / "tokenizer.json"
    tok.save(str(path))
    return path


def test_a_local_tokenizer_file(tmp_path: Path) -> None:
    write_project(tmp_path / "data")
    tokenizer_json(tmp_path / "data", [p.read_text() for p in (tmp_path / "data").rglob("*.rs")])
    corpus = text.load(str(tmp_path / "data"), context=16, num_shards=2, tokenizer="tokenizer.json")
    x, y = next(corpus.train_batches("shard-0", 4, seed=0))
    assert x.shape == (4, 16) and int(x.max()) < corpus.tokens.vocab_size <= 300
    assert "impl" in corpus.tokens.decode(corpus.held_out[:40].tolist())
    with pytest.raises(DataError, match="tokenizer 'nope.json' not found"):
        text.load(str(tmp_path / "data"), tokenizer="nope.json")


def test_a_recipe_tokenizer_outside_the_data_roots_is_refused(tmp_path: Path) -> None:
    write_project(tmp_path / "data")
    outside = tokenizer_json(tmp_path, ["fn main() {}"] * 10)
    recipe = parse_recipe(
        f'[run]\n[model]\n[data]\npath = "{tmp_path / "data"}"\n'
        f'options = {{ context = 16, num_shards = 2, tokenizer = "{outside}" }}\n'
    )
    with pytest.raises(ConfigError, match="outside the folders this machine lets recipes read"):
        load_data(recipe, trust=Trust.of(data_roots=[tmp_path / "data"]))
    assert load_data(recipe, trust=Trust.of(data_roots=[tmp_path])).shard_names()


def test_a_relative_tokenizer_path_cannot_leave_the_data_folder(tmp_path: Path) -> None:
    write_project(tmp_path / "data")
    tokenizer_json(tmp_path, ["fn main() {}"] * 10)
    recipe = parse_recipe(
        f'[run]\n[model]\n[data]\npath = "{tmp_path / "data"}"\n'
        'options = { context = 16, num_shards = 2, tokenizer = "../tokenizer.json" }\n'
    )
    with pytest.raises(ConfigError, match="outside the folders this machine lets recipes read"):
        load_data(recipe, trust=Trust.of(data_roots=[tmp_path / "data"]))
    with pytest.raises(ConfigError, match="outside the folders"):  # a worker's own --data: the same
        load_data(recipe, str(tmp_path / "data"), Trust())
