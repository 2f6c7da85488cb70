"""Trust: a recipe names code, and only code the machine's owner trusts is imported or called.

The factory module used here writes a marker file when it is imported and another when it is
called, so each test proves that nothing ran, not only that the answer was a refusal.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tessera.errors import ConfigError
from tessera.models.hf import causal_lm
from tessera.recipe import parse_recipe
from tessera.task import build_model, load_data, model_bytes, require_trusted, run_code
from tessera.trust import BUILTIN, Trust, check_options
from tests.helpers import write_factory_module

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Markers of a factory module ``evil_factory`` importable from ``tmp_path``."""
    folder = write_factory_module(tmp_path, "evil_factory")
    monkeypatch.setenv("TESSERA_TEST_MARKS", str(folder))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield folder
    sys.modules.pop("evil_factory", None)


def recipe(
    model: str = "tessera.models.lm:build", data: str = "tessera.data.text:load", extra: str = ""
) -> str:
    return f'[run]\nname = "t"\n[model]\nfactory = "{model}"\n{extra}\n[data]\nsource = "{data}"\n'


@pytest.mark.parametrize(
    ("model", "data", "options"),
    [
        ("os:system", "tessera.data.text:load", 'options = { command = "touch MARKS/ran" }'),
        ("subprocess:run", "tessera.data.text:load", 'options = { args = ["touch", "MARKS/ran"] }'),
        ("tessera.models.lm:build", "builtins:eval", ""),
        ("evil_factory:build", "tessera.data.text:load", ""),
        ("tessera.models.lm:build", "evil_factory:build", ""),
        ("tessera.testing.netlab:run", "tessera.data.text:load", ""),  # tessera's code, but no factory
    ],
)
def test_untrusted_factories_are_refused_before_import(
    marks: Path, model: str, data: str, options: str
) -> None:
    text = recipe(model, data, options.replace("MARKS", str(marks)))
    parsed = parse_recipe(text)  # a recipe is data: parsing it runs nothing
    with pytest.raises(ConfigError, match="not trusted on this machine, so it was not imported"):
        require_trusted(parsed, Trust())
    build = model_bytes if data == "tessera.data.text:load" else load_data
    with pytest.raises(ConfigError, match=f"--trust {model if build is model_bytes else data}"):
        build(parsed)
    assert list(marks.iterdir()) == [] and "evil_factory" not in sys.modules


def test_a_factory_the_owner_allows_runs_and_says_why(marks: Path) -> None:
    parsed = parse_recipe(recipe("evil_factory:build"))
    trust = Trust.of(["evil_factory:build"])
    [model, data] = run_code(parsed, trust)
    assert model.origin == "allowed by this machine's configuration" and data.origin == "built into tessera"
    assert run_code(parsed, Trust())[0].origin is None and list(marks.iterdir()) == []
    assert isinstance(build_model(parsed, trust), torch.nn.Module)
    pid = os.getpid()
    assert {p.name for p in marks.iterdir()} == {f"evil_factory-imported-{pid}", f"evil_factory-called-{pid}"}


def test_entry_points_of_installed_packages_are_trusted(marks: Path, tmp_path: Path) -> None:
    """A package that declares a factory in the entry-point group tessera.factories (its metadata
    is read, nothing is imported until a recipe uses it)."""
    dist = tmp_path / "evil_factory-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evil-factory\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tessera.factories]\nsmall = evil_factory:build\n")
    assert Trust().origin("evil_factory:build") == "declared by the installed package evil-factory"
    assert Trust(entry_points=False).origin("evil_factory:build") is None
    assert list(marks.iterdir()) == []


def test_options_must_be_the_factorys_declared_parameters_and_types() -> None:
    with pytest.raises(ConfigError, match=r"takes no options \['colour'\]"):
        build_model(parse_recipe(recipe(extra="options = { colour = 1 }")))
    with pytest.raises(ConfigError, match="d_model = 'wide'"):
        build_model(parse_recipe(recipe(extra='options = { d_model = "wide" }')))
    with pytest.raises(ConfigError, match="valid integer"):
        build_model(parse_recipe(recipe(extra="options = { n_layers = 1.5 }")))
    with pytest.raises(ConfigError, match="options may not set"):
        load_data(parse_recipe(recipe() + 'options = { path = "/etc" }'))

    def needs(size: int, name: str = "x") -> None: ...

    with pytest.raises(ConfigError, match=r"needs the options \['size'\]"):
        check_options(needs, {}, "f:needs")
    check_options(needs, {"size": 3}, "f:needs")


def test_model_size_is_measured_without_allocating() -> None:
    """13 TB of parameters: measured on the meta device in a moment; building it would fail.
    Options beyond the factory's own bounds are refused before anything is built."""
    huge = parse_recipe(recipe(extra="options = { d_model = 65536, n_layers = 64, n_heads = 4 }"))
    assert model_bytes(huge) > 1.3e13
    for options, message in (("n_layers = 1000000000", "n_layers must be from 1 to 1024"),
                             ("d_model = 100000", "d_model must be from 1 to 65536")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            model_bytes(parse_recipe(recipe(extra=f"options = {{ {options} }}")))
    small = parse_recipe(recipe(extra="options = { context = 16, d_model = 16, n_layers = 1, n_heads = 2 }"))
    assert model_bytes(small) == sum(t.numel() * 4 for t in build_model(small).state_dict().values())


def test_recipe_data_paths_must_lie_inside_the_data_roots(tmp_path: Path, corpus_dir: Path) -> None:
    reads = parse_recipe(recipe() + f'path = "{corpus_dir}"\noptions = {{ context = 16, num_shards = 2 }}\n')
    with pytest.raises(ConfigError, match="outside the folders this machine lets recipes read"):
        load_data(reads)
    assert load_data(reads, trust=Trust.of(data_roots=[corpus_dir])).shard_names()
    assert load_data(reads, path=str(corpus_dir)).shard_names()  # a worker's own --data: its choice
    escape = tmp_path / "root"
    escape.mkdir()
    (escape / "elsewhere").symlink_to(corpus_dir)  # a link out of the root resolves outside it
    linked = parse_recipe(recipe() + f'path = "{escape / "elsewhere"}"\n')
    with pytest.raises(ConfigError, match="outside"):
        load_data(linked, trust=Trust.of(data_roots=[escape]))
    home = parse_recipe(recipe() + 'path = "~/.ssh"\n')
    with pytest.raises(ConfigError, match=str(Path("~/.ssh").expanduser())):
        load_data(home, trust=Trust.of(data_roots=[tmp_path]))


def test_transformers_architectures_from_a_declarative_config() -> None:
    config = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 16, "vocab_size": 256}
    model = causal_lm("gpt2", config)
    assert model(torch.zeros(2, 8, dtype=torch.long)).shape == (2, 8, 256)
    assert "tessera.models.hf:causal_lm" in BUILTIN
    with pytest.raises(ConfigError, match="not a causal LM that ships with transformers"):
        causal_lm("my_remote_model", {})
    for key in ("auto_map", "trust_remote_code", "colour", "_name_or_path"):
        with pytest.raises(ConfigError, match="no settable keys"):
            causal_lm("gpt2", {key: "x"})
    options = 'options = { model_type = "gpt2", config = { n_layer = 1, n_embd = 16, n_head = 2 } }'
    parsed = parse_recipe(recipe("tessera.models.hf:causal_lm", extra=options))
    assert model_bytes(parsed) == sum(t.numel() * 4 for t in build_model(parsed).parameters())


def test_the_example_hub_configuration(tmp_path: Path) -> None:
    from tessera.hub.config import HubConfig, HubLimits, PoolSettings, VerifySettings, load_hub_config
    from tessera.testing.cluster import ROOT

    config = load_hub_config(ROOT / "examples" / "hub.toml", ["extra.module:build"], [str(tmp_path)])
    assert config.limits == HubLimits() and config.api_docs == HubConfig().api_docs
    assert config.pool == PoolSettings() and config.verify == VerifySettings()
    assert config.trust.factories == {
        "examples.line_kinds:build_model",
        "examples.line_kinds:load",
        "extra.module:build",
    }
    assert config.trust.data_roots == (tmp_path,)
    bad = tmp_path / "bad.toml"
    for text, message in (
        ("[limits]\nmax_workers = 0\n", "limits.max_workers must be a positive integer"),
        ('[limits]\nmax_workers = "many"\n', "limits.max_workers = 'many'"),
        ("[limit]\n", "unknown sections ['limit']"),
        ('[trust]\nfactories = ["os.system"]\n', "must look like 'package.module:function'"),
        ('[api]\ndocs = "open"\n', "api.docs"),
        ("[pool]\nmin_share = 0.9\n", "pool.min_share must be from 0 to 0.5"),
        ("[verify]\nfraction = 2\n", "verify.fraction must be from 0 to 1"),
    ):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_hub_config(bad, [], [])


def test_the_demo_trusts_the_data_folder_it_is_given(corpus_dir: Path) -> None:
    from tessera.demo import DemoSettings, demo_recipe

    settings = DemoSettings(workers=2, data_path=corpus_dir)
    parsed = parse_recipe(demo_recipe(settings))
    assert load_data(parsed, trust=settings.trust).shard_names()  # what its hub and workers get
    with pytest.raises(ConfigError, match="--data-root"):
        load_data(parsed)


def test_a_changed_trusted_package_is_imported_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The factory's module and the package's other modules it uses: a change to either takes
    effect at the next resolve, without restarting the process."""
    pkg = tmp_path / "mine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layers.py").write_text("WIDTH = 8\n")
    (pkg / "models.py").write_text("from mine.layers import WIDTH\n\ndef build():\n    return WIDTH\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    trust = Trust.of(["mine.models:build"])
    try:
        assert trust.resolve("mine.models:build", "model")() == 8
        assert trust.resolve("mine.models:build", "model")() == 8  # unchanged: the same import
        (pkg / "layers.py").write_text("WIDTH = 16  # wider\n")
        assert trust.resolve("mine.models:build", "model")() == 16
        (pkg / "models.py").write_text("raise RuntimeError('half-edited')\n")
        with pytest.raises(ConfigError, match="importing 'mine.models' .* failed: RuntimeError: half-edited"):
            trust.resolve("mine.models:build", "model")
        (pkg / "models.py").write_text("def build():\n    return 'fixed'\n")
        assert trust.resolve("mine.models:build", "model")() == "fixed"
    finally:
        for name in [n for n in sys.modules if n == "mine" or n.startswith("mine.")]:
            del sys.modules[name]


def test_an_unimportable_factory_says_how_to_make_it_importable() -> None:
    with pytest.raises(
        ConfigError, match="must be importable on this machine: install its package, or start"
    ):
        Trust.of(["not_here.models:build"]).resolve("not_here.models:build", "model")
