"""The commons through real processes: a `tessera hub`, the `tessera data` and `access` commands
of a collective's members, a run on their datasets trained by `tessera worker` processes of two
providers, its lineage and model card, a withdrawal and its marks, and access earned by
contributing compute."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tessera.api.client import HubClient
from tessera.testing.cluster import (
    ROOT,
    free_port,
    start_hub,
    start_worker,
    stop,
    tessera_command,
    wait_workers,
)
from tests.helpers import dataset_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
TINY = 1e-12  # PFLOP of credited compute that earns the curated data: any contribution reaches it


def tessera(token: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        tessera_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, COLUMNS="200", TESSERA_TOKEN=token),
    )  # fmt: skip
    assert (done.returncode == 0) == ok, done.stdout + done.stderr
    return done


def printed(token: str, *args: str) -> Any:
    return json.loads(tessera(token, *args, "--json").stdout)


def summary(pkg: str, i: int) -> str:
    """cy's hand-written summary of one of ada's documents (JSON Lines)."""
    return json.dumps(
        {"describes": f"{pkg}/mod{i}.py", "text": f"{pkg} module {i} multiplies x by {i}. " * 8}
    )


def test_the_commons_story(tmp_path: Path, corpus_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hub = start_hub(tmp_path / "hub", port, log=tmp_path / "hub.log")
    procs: list[subprocess.Popen[bytes]] = [hub]
    admin = HubClient.connect(url, (tmp_path / "hub" / "admin.token").read_text().strip())
    try:
        admin.create_provider("lab", "collective")
        tokens = {name: admin.create_provider(name).token for name in ("ada", "ben", "cy", "dee")}
        for member in ("ada", "ben", "cy"):
            admin.add_member("lab", member)
        hub_opt = ("--hub", url)

        # ada adds documents for everyone, ben his private notes, cy summaries of ada's documents
        docs = printed(tokens["ada"], "data", "add", str(corpus_dir), "--name", "docs", "--licence",
                       "CC-BY-4.0", "--visibility", "public", *hub_opt)  # fmt: skip
        notes_dir = tmp_path / "ben-notes"
        shutil.copytree(corpus_dir / "gamma", notes_dir / "gamma")
        notes = printed(tokens["ben"], "data", "add", str(notes_dir), "--name", "ben-notes", "--licence",
                        "CC-BY-4.0", *hub_opt)  # fmt: skip
        assert (docs["state"], notes["visibility"], notes["stored"]) == ("ready", "private", False)
        lines = [summary(pkg, i) for pkg in ("alpha", "beta") for i in range(25)]
        (tmp_path / "summaries.jsonl").write_text("\n".join(lines) + "\n")
        summaries = printed(tokens["cy"], "data", "derive", "annotate", "--from", docs["dataset_id"],
                            "--annotations", str(tmp_path / "summaries.jsonl"), "--name", "summaries",
                            "--licence", "CC-BY-4.0", "--visibility", "public",
                            "--cache", str(tmp_path / "cy-cache"), *hub_opt)  # fmt: skip
        assert summaries["derivation"]["inputs"] == [docs["dataset_id"]]
        assert summaries["derivation"]["params"]["annotations"].startswith("sha256:")
        curated_dir = tmp_path / "curated"
        shutil.copytree(corpus_dir / "delta", curated_dir / "delta")
        curated = printed(tokens["ada"], "data", "add", str(curated_dir), "--name", "curated", "--licence",
                          "CC-BY-4.0", "--visibility", "contributors", "--threshold", str(TINY),
                          *hub_opt)  # fmt: skip

        # dee has contributed nothing to ada's runs yet: may not read the curated data
        refused = printed(
            tokens["dee"], "access", "explain", curated["dataset_id"], "--provider", "dee", *hub_opt
        )
        assert not refused["granted"] and "below the owner's threshold" in refused["reason"]
        tessera(tokens["dee"], "data", "get", curated["dataset_id"], "--out", str(tmp_path / "dee-get"),
                "--cache", str(tmp_path / "dee-cache"), *hub_opt, ok=False)  # fmt: skip

        # ada's run trains on the three; ben's worker holds his private copy, dee's does not
        weights = {docs["dataset_id"]: 1.0, notes["dataset_id"]: 1.0, summaries["dataset_id"]: 1.0}
        (tmp_path / "recipe.toml").write_text(dataset_recipe(weights, inner_steps=5))
        run_id = printed(tokens["ada"], "create-run", str(tmp_path / "recipe.toml"), *hub_opt)["run_id"]
        workers = [
            start_worker(
                (url, tokens["ben"], run_id), tmp_path / "w-ben", "--data", str(notes_dir), name="ben"
            ),
            start_worker((url, tokens["dee"], run_id), tmp_path / "w-dee", name="dee"),
        ]
        procs += workers
        wait_workers(workers, 300, tmp_path, "a worker")

        lineage = printed(tokens["ada"], "lineage", run_id, *hub_opt)
        used = {d["dataset_id"]: d for d in lineage["datasets"]}
        assert set(used) == set(weights)  # summaries derive from docs, itself one of the run's
        assert used[notes["dataset_id"]]["tokens"] > 0 and used[notes["dataset_id"]]["name"] is None
        assert used[summaries["dataset_id"]]["derived_from"] == [docs["dataset_id"]]
        compute = {(c["provider"], c["dataset_id"]) for c in lineage["compute"]}
        assert ("ben", notes["dataset_id"]) in compute and {p for p, _ in compute} == {"ben", "dee"}
        assert all(d != notes["dataset_id"] for p, d in compute if p == "dee")  # private: ben's only
        assert sum(c["tokens"] for c in lineage["compute"]) == sum(d["tokens"] for d in lineage["datasets"])

        out = tmp_path / "export"
        tessera(tokens["ada"], "export", str(out), "--run", run_id, "--token", tokens["ada"], *hub_opt)
        card = (out / "README.md").read_text()
        assert (
            f"tessera-dataset:docs@{docs['dataset_id']}" in card and "| ben |" in card and "| dee |" in card
        )
        assert "annotate of" in card and "(private)" in card
        prov = json.loads((out / "prov.json").read_text())
        assert f"tessera:dataset/{notes['dataset_id']}" in prov["entity"] and len(prov["used"]) == 3

        # ben withdraws his notes: the run and its versions are marked, its owner told
        tessera(
            tokens["ben"], "data", "withdraw", notes["dataset_id"], "--reason", "changed my mind", *hub_opt
        )
        status = tessera(tokens["ada"], "status", "--run", run_id, "--token", tokens["ada"], *hub_opt).stdout
        assert "marked: trains on a private dataset" in status and "since withdrawn" in status
        assert printed(tokens["ada"], "lineage", run_id, *hub_opt)["marks"]
        assert [e.kind for e in admin.events(run_id)] == ["dataset_withdrawn"]
        assert printed(tokens["ben"], "data", "show", notes["dataset_id"], *hub_opt)["withdrawn_reason"] == (
            "changed my mind"
        )

        # dee's compute on ada's run earned it the curated data
        granted = printed(
            tokens["dee"], "access", "explain", curated["dataset_id"], "--provider", "dee", *hub_opt
        )
        assert granted["granted"] and granted["credit_pflop"] > TINY
        tessera(tokens["dee"], "data", "get", curated["dataset_id"], "--out", str(tmp_path / "dee-get"),
                "--cache", str(tmp_path / "dee-cache"), *hub_opt)  # fmt: skip
        assert sorted(p.name for p in (tmp_path / "dee-get" / "delta").iterdir())[:2] == [
            "mod0.py",
            "mod1.py",
        ]
    finally:
        admin.close()
        stop(procs)
