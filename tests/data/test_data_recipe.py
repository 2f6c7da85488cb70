from pathlib import Path

import pytest

from tessera.data.corpus import is_held_out, pack_domains
from tessera.data.text import list_text_files, load
from tessera.errors import ConfigError, DataError
from tessera.recipe import parse_recipe


def write_tree(root: Path) -> None:
    for pkg in ("alpha", "beta", "gamma"):
        for i in range(30):
            f = root / pkg / f"mod{i}.py"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(f"# {pkg} {i}\n" + f"def f{i}(x):\n    return x + {i}\n" * 20)
    (root / "top.py").write_text("import os\n" * 50)
    (root / "tests").mkdir()
    (root / "tests" / "test_skip.py").write_text("SKIPPED = True\n" * 100)


def test_folder_corpus_domains_shards_and_held_out(tmp_path: Path) -> None:
    write_tree(tmp_path)
    corpus = load(str(tmp_path), context=16, num_shards=2)
    assert set(corpus.domains) == {"alpha", "beta", "gamma", "modules"}
    assert sorted(d for ds in corpus.shards.values() for d in ds) == ["alpha", "beta", "gamma", "modules"]
    assert len(corpus.shard_names()) == 2
    assert len(corpus.held_out) > 0
    everything = b"".join(a.tobytes() for a in corpus.domains.values())
    assert b"SKIPPED" not in everything  # test folders are excluded
    x, y = next(corpus.train_batches("shard-0", 4, seed=0))
    assert x.shape == (4, 16) and (x[:, 1:] == y[:, :-1]).all()
    v1, v2 = corpus.validation_batches(4, 2), corpus.validation_batches(4, 2)
    assert all((a[0] == b[0]).all() for a, b in zip(v1, v2, strict=True))


def test_held_out_files_never_reach_training(tmp_path: Path) -> None:
    write_tree(tmp_path)
    held = [p for p in tmp_path.rglob("*.py") if is_held_out(p.read_bytes(), 0.05)]
    corpus = load(str(tmp_path), context=16, num_shards=2)
    training = b"".join(a.tobytes() for a in corpus.domains.values())
    assert held
    for path in held:
        assert path.read_bytes() not in training


def test_held_out_split_is_its_files_in_order_and_per_domain(tmp_path: Path) -> None:
    """The held-out split is the held-out files in file order; with ``domains`` each domain holds
    out at least one file of its own."""
    write_tree(tmp_path)
    files = list_text_files(tmp_path)
    held = [f for f in files if is_held_out(f.read_bytes(), 0.05)]
    corpus = load(str(tmp_path), context=16, num_shards=2)
    assert corpus.held_out.tobytes() == b"".join(f.read_bytes() + b"\n" for f in held)
    per_domain = load(str(tmp_path), context=16, domains=["alpha", "beta"])
    assert per_domain.shard_names() == ["alpha", "beta"]
    assert set(per_domain.held_out_domains) == {"alpha", "beta"}
    x, _ = per_domain.shard_validation_batches("beta", 2, 1)[0]
    assert x.shape == (2, 16)
    with pytest.raises(DataError, match="not found"):
        load(str(tmp_path), context=16, domains=["alpha", "nope"])


def test_pack_domains_balances() -> None:
    assert pack_domains({"a": 10, "b": 6, "c": 5, "d": 1}, 2) == [["a", "d"], ["b", "c"]]


def test_stdlib_corpus_has_domains() -> None:
    corpus = load(None, context=64, num_shards=4)
    assert {"email", "asyncio", "json"} <= set(corpus.domains)
    assert len(corpus.shard_names()) == 4 and len(corpus.held_out) > 100_000


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no text files"):
        load(str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        load(str(tmp_path / "missing"))


def test_recipe_defaults_and_errors() -> None:
    recipe = parse_recipe("[run]\nrounds = 3\n[model]\n[train]\ninner_steps = 7\n")
    assert recipe.run.rounds == 3 and recipe.train.inner_steps == 7
    assert recipe.outer.lr == 0.7 and recipe.outer.momentum == 0.9 and recipe.outer.kind == "nesterov"
    with pytest.raises(ConfigError, match="unknown key train.stepz"):
        parse_recipe("[run]\n[model]\n[train]\nstepz = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_recipe("[run\n")
    with pytest.raises(ConfigError, match="run.rounds"):
        parse_recipe("[model]\n[run]\nrounds = 0\n")
    with pytest.raises(ConfigError, match="unknown recipe sections"):
        parse_recipe("[bogus]\n")
    with pytest.raises(ConfigError, match="loss"):
        parse_recipe('[run]\n[model]\n[train]\nloss = "hinge"\n')


def test_shipped_recipes_parse_and_match_the_demo() -> None:
    from tessera.demo import DemoSettings, demo_recipe

    root = Path(__file__).resolve().parents[2] / "examples"
    assert (root / "stdlib_lm.toml").read_text() == demo_recipe(DemoSettings())
    lines = parse_recipe((root / "line_kinds.toml").read_text())
    assert lines.model.factory == "examples.line_kinds:build_model"
