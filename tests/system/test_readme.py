"""The README's examples, run as written: a plain `transformers` GPT-2 on a folder of text that
is not Python, trained by a real hub process and two worker processes, sampled and exported for
Hugging Face tools; a JSON Lines data set; and a private LoRA fine-tune on one's own notes."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tessera.cli.export import latest_model
from tessera.cli.read import LocalReader
from tessera.core.inner import outputs_of
from tessera.testing.cluster import ROOT, free_port, start_hub, stop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")


def readme_block(name: str) -> str:
    """The code block after ``<!-- example: NAME -->`` in the README."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- example: {re.escape(name)} -->\n```\w*\n(.*?)```", text, re.S)
    assert match, f"README has no example {name}"
    return match.group(1)


def sentences(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(" ".join(rng.choice(words) for _ in range(8)).capitalize() + "." for _ in range(n))


def write_texts(folder: Path) -> None:
    """Sources and docs of another language (suffixes a Python corpus never has), and a binary."""
    rng = random.Random(1)
    words = ["fn", "let", "mut", "impl", "struct", "match", "loop", "where", "pub", "use", "crate", "self"]
    for i in range(40):
        sub = folder / ("src" if i % 2 else "book")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"part{i}{'.rs' if i % 2 else '.adoc'}").write_text(
            f"// part {i}\n{sentences(rng, words, 30)}\n"
        )
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0" + bytes(range(256)))


def run_script(script: str, cwd: Path, env: dict[str, str], port: int) -> subprocess.CompletedProcess[str]:
    """A README shell block, with `tessera` and `python` this test's interpreter, on ``port``."""
    python = sys.executable
    prelude = f'tessera() {{ "{python}" -m tessera "$@"; }}\npython() {{ "{python}" "$@"; }}\nset -e\n'
    body = script.replace("8700", str(port))
    return subprocess.run(
        ["bash", "-c", prelude + body + "\nwait\n"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )


def test_readme_examples_through_a_real_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_models.py").write_text(readme_block("my_models.py"))
    (tmp_path / "gpt2.toml").write_text(readme_block("gpt2.toml"))
    write_texts(tmp_path / "my-texts")
    rng = random.Random(2)
    notes = readme_block("notes.jsonl") + "".join(
        json.dumps({"text": sentences(rng, ["round", "worker", "hub", "update", "shard"], 3), "topic": t})
        + "\n"
        for t in ["pool", "rounds"] * 30
    )
    (tmp_path / "notes.jsonl").write_text(notes)
    (tmp_path / "notes.toml").write_text(readme_block("notes.toml"))
    mine = tmp_path / "my-notes"
    mine.mkdir()
    for i in range(30):
        (mine / f"note{i}.txt").write_text(
            sentences(rng, ["the", "meeting", "notes", "for", "today", "agenda"], 20)
        )

    hub_line, *rest = readme_block("gpt2.sh").splitlines()
    port = free_port()
    args = hub_line.split("&")[0].split()[2:]  # after `tessera hub`
    args[args.index("--port") + 1] = str(port)
    hub = start_hub(tmp_path / "hub", port, *args[2:], cwd=tmp_path, log=tmp_path / "hub.log")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    try:
        script = "\n".join(rest) + "\n" + readme_block("finetune.sh")
        script += f'\nNOTES=$(tessera create-run notes.toml --hub $HUB --json | python -c "{PICK_RUN}")\n'
        script += "tessera worker --hub $HUB --run $NOTES --data-root .\n"
        script += "tessera status --hub $HUB --run $NOTES --json > notes-status.json\n"
        script += "tessera status --hub $HUB --run $RUN --json > gpt2-status.json\n"
        done = run_script(script, tmp_path, env, port)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        stop([hub])
    out = done.stdout
    assert "fn " in out and "The " in out  # both samples printed their prompts and continuations
    gpt2 = json.loads((tmp_path / "gpt2-status.json").read_text())["status"]
    assert gpt2["status"] == "finished" and gpt2["latest_version"]["val_loss"] < gpt2["initial_val_loss"]
    notes_status = json.loads((tmp_path / "notes-status.json").read_text())["status"]
    assert notes_status["status"] == "finished"
    assert notes_status["latest_version"]["val_loss"] < notes_status["initial_val_loss"]

    export = tmp_path / "gpt2-export"
    assert {"config.json", "model.safetensors", "README.md", "lineage.json", "tessera.json"} <= {
        p.name for p in export.iterdir()
    }
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(export)
    ids = torch.randint(0, 256, (1, 16))
    monkeypatch.syspath_prepend(str(tmp_path))  # the hub's own version, built here as the hub does
    try:
        trained, _, _ = latest_model(LocalReader(tmp_path / "hub"), gpt2["run_id"], None, ["my_models:gpt2"])
    finally:
        sys.modules.pop("my_models", None)
    assert torch.allclose(loaded(ids).logits, outputs_of(trained.eval(), ids), atol=1e-5)
    card = (export / "README.md").read_text()
    assert card.startswith('---\nlibrary_name: "transformers"\nlicense: "mit"') and "| admin |" in card
    lineage = json.loads((export / "lineage.json").read_text())
    assert [v["number"] for v in lineage["versions"]] == [0, 1, 2] and lineage["contributors"][0]["pflop"] > 0

    adapted = json.loads((tmp_path / "gpt2-notes" / "lineage.json").read_text())
    assert adapted["base"]["version"] == 2 and adapted["adapter"]["name"] == "my-notes"
    assert adapted["adapter"]["adapter_loss"] < adapted["adapter"]["base_loss"]
    assert (
        len(adapted["adapter"]["data_fingerprint"]) == 64
        and "base_model:" in (tmp_path / "gpt2-notes" / "README.md").read_text()
    )


PICK_RUN = "import json,sys; print(json.load(sys.stdin)['run_id'])"
