"""Modules: the module map, the reference modular LM, and a modular run through the real hub."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from tessera.api.client import HubClient
from tessera.api.messages import MergeRequest
from tessera.core.merging import MergeSettings, merge
from tessera.core.modules import assign, closure, parse_modules, training_order
from tessera.core.tensors import from_bytes
from tessera.errors import ConfigError, Forbidden
from tessera.hub.config import HubConfig, HubLimits
from tessera.hub.service import HubService
from tessera.hub.tables import Run
from tessera.models.modular import build, module_params
from tessera.recipe import parse_recipe
from tessera.task import assemble, model_bytes
from tessera.testing.cluster import run_loops
from tessera.worker.loop import WorkLoop
from tessera.worker.session import WorkerSettings
from tests.helpers import GENERAL, modular_recipe, reading, tiny_recipe

pytestmark = pytest.mark.timeout(120)


# --- module maps --------------------------------------------------------------------------


def test_module_map_parses_orders_and_assigns() -> None:
    specs = parse_modules(
        {
            "b": {"params": ["x.b.*"], "depends": ["trunk"]},
            "trunk": {"params": ["x.t.*"]},
            "top": {"params": ["x.top*"], "depends": ["b"]},
        }
    )
    assert training_order(specs) == ["trunk", "b", "top"]
    assert closure(specs, "top") == ["trunk", "b"]
    owner = assign(specs, ["x.t.w", "x.b.w", "x.top"])
    assert owner == {"x.t.w": "trunk", "x.b.w": "b", "x.top": "top"}


@pytest.mark.parametrize(
    "table, message",
    [
        ({"a": {"params": ["*"], "depends": ["a"]}}, "names the module itself"),
        ({"a": {"params": ["*"], "depends": ["zz"]}}, "unknown modules"),
        ({"a": {"params": ["a*"], "depends": ["b"]}, "b": {"params": ["b*"], "depends": ["a"]}}, "cycle"),
        ({"a": {"params": "blocks.*"}}, "list of strings"),
        ({"a": {"params": []}}, "parameter-name patterns"),
        ({"a": {"params": ["*"], "colour": 1}}, "unknown key modules.a.colour"),
        ({"a": {"params": ["*"], "rounds": 0}}, "positive integer"),
        ({"a b": {"params": ["*"]}}, "letters, digits"),
        ({"a": {"params": ["*"], "outer": 3}}, "must be tables"),
    ],
)
def test_bad_module_tables_are_refused(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_modules(table)


def test_a_module_trains_with_its_own_settings() -> None:
    text = (
        'rounds = 5\n[modules.m]\nparams = ["*"]\nrounds = 2\ninner_steps = 7\nouter = { kind = "average" }\n'
    )
    recipe = parse_recipe("[model]\n[run]\n" + text)
    mine = recipe.for_module("m")
    assert (mine.run.rounds, mine.train.inner_steps, mine.outer.kind) == (2, 7, "average")
    assert recipe.run.rounds == 5 and recipe.outer.kind == "nesterov"
    with pytest.raises(ConfigError, match="modules.m.outer"):
        parse_recipe('[run]\n[model]\n[modules.m]\nparams = ["*"]\nouter = { kind = "adam" }\n')


def test_every_tensor_in_exactly_one_module() -> None:
    specs = parse_modules({"a": {"params": ["w*"]}, "b": {"params": ["w2", "v"]}})
    with pytest.raises(ConfigError, match="several modules"):
        assign(specs, ["w1", "w2", "v"])
    with pytest.raises(ConfigError, match="no module's params match"):
        assign(parse_modules({"a": {"params": ["w*"]}}), ["w1", "u"])
    with pytest.raises(ConfigError, match=r"match no tensor"):
        assign(parse_modules({"a": {"params": ["w*"]}, "b": {"params": ["q"]}}), ["w1"])


# --- the reference modular LM -------------------------------------------------------------

SMALL = {"context": 16, "d_model": 16, "n_layers": 2, "n_heads": 2}


def test_a_model_with_some_experts_holds_the_same_tensors() -> None:
    torch.manual_seed(5)
    whole = build(experts=["a", "b", "c"], **SMALL).state_dict()
    torch.manual_seed(5)
    part = build(experts=["b"], **SMALL).state_dict()
    assert set(part) < set(whole) and all(torch.equal(v, whole[k]) for k, v in part.items())
    patterns = module_params(build(["a", "b", "c"]).modular)
    specs = parse_modules({k: {"params": v} for k, v in patterns.items()})
    assert set(assign(specs, whole).values()) == {"trunk", "a", "b", "c"}
    assert set(assign(specs, part, every_module=False).values()) == {"trunk", "b"}


def test_new_expert_changes_nothing_and_the_mixture_is_a_distribution() -> None:
    torch.manual_seed(0)
    model = build(experts=["a", "b"], **SMALL)
    x = torch.randint(0, 256, (3, 16))
    model.use([])
    trunk = model(x)
    model.use(["a"])
    assert torch.equal(model(x), trunk)  # zero-initialised expert output
    with torch.no_grad():
        for block in model.blocks:
            for p in block.experts.parameters():  # type: ignore[union-attr]
                p.normal_(0, 0.5)
    model.use(["a", "b"])
    mixed = model(x)
    assert torch.allclose(mixed.exp().sum(-1), torch.ones(3, 16), atol=1e-5)
    model.use(["a"])
    only_a = torch.log_softmax(model(x), -1)
    # at the first position nothing is seen yet: the mixture is the prior's (1/2, 1/2)
    model.use(["b"])
    only_b = torch.log_softmax(model(x), -1)
    first = torch.logsumexp(torch.stack([only_a[:, 0], only_b[:, 0]]) + torch.tensor(0.5).log(), 0)
    assert torch.allclose(mixed[:, 0], first, atol=1e-5)
    with pytest.raises(ConfigError, match="no expert"):
        model.use(["zz"])


def test_the_posterior_moves_to_the_expert_that_predicts_the_sequence() -> None:
    torch.manual_seed(0)
    model = build(experts=["a", "b"], **SMALL)
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():  # expert a: a strong push towards the bytes of x; b: noise
        for block in model.blocks:
            for p in block.experts["b"].parameters():  # type: ignore[index]
                p.normal_(0, 0.3)
    model.use(["a"])
    good = torch.log_softmax(model(x), -1)
    model.use(["b"])
    bad = torch.log_softmax(model(x), -1)
    gain = (good - bad)[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1).sum()
    model.use(["a", "b"])
    mixed = model(x)
    # late in the sequence the mixture sits nearer the expert with the higher likelihood so far
    last_good, last_bad = good[:, -1], bad[:, -1]
    nearer_good = (mixed[:, -1] - last_good).abs().mean() < (mixed[:, -1] - last_bad).abs().mean()
    assert nearer_good == bool(gain > 0)
    prior = model.estimate_prior([(x, x)])  # from held-out data: the same expert is favoured
    assert len(prior) == 2 and abs(sum(prior) - 1) < 1e-6 and (prior[0] > prior[1]) == bool(gain > 0)
    model.use(["a", "b"], prior)
    assert torch.allclose(model(x)[:, 0].exp().sum(-1), torch.ones(2), atol=1e-5)


# --- a modular run through the hub --------------------------------------------------------


def test_modular_run_trains_trunk_then_experts_with_partial_downloads(
    http: TestClient, admin: HubClient, corpus_dir: Path, tmp_path: Path
) -> None:
    owner = admin.create_provider("alpha-owner")
    run_id = admin.create_run(modular_recipe(corpus_dir, owner="alpha-owner")).run_id
    status = admin.status(run_id)
    assert [m.module for m in status.modules] == ["trunk", "alpha", "beta"]
    assert status.latest_version is None and all(m.latest_version for m in status.modules)
    stranger = HubClient(http, admin.create_provider("stranger").token, retry_s=0, run_id=run_id)
    with pytest.raises(Forbidden, match="trains only on alpha-owner's nodes"):
        stranger.register("s", "alpha")
    tokens = {"trunk": [admin.create_provider(f"t{i}").token for i in range(2)], "alpha": [owner.token]}
    tokens["beta"] = [admin.create_provider("b0").token]
    clients, loops = [], []
    for module, module_tokens in tokens.items():
        for i, token in enumerate(module_tokens):
            client = HubClient(http, token, retry_s=0, run_id=run_id)
            settings = WorkerSettings(
                tmp_path / f"{module}{i}",
                name=f"{module}{i}",
                wait_s=2,
                module=module,
                trust=reading(corpus_dir),
            )
            clients.append(client)
            loops.append(WorkLoop(client, settings))
    assert not run_loops(loops)
    status = admin.status(run_id)
    assert status.status == "finished" and all(m.status == "finished" for m in status.modules)
    trunk, alpha, beta = status.modules
    assert trunk.rounds_done == 2 and alpha.rounds_done == 2 and beta.rounds_done == 2
    trunk_final = admin.version(trunk.run_id, 2)
    for expert in (alpha, beta):
        first = admin.version(expert.run_id, 1)
        assert first.created_at >= trunk_final.created_at  # experts train on the final trunk
        start = admin.version(expert.run_id, 0).val_loss  # on the final trunk, evaluated then
        assert start is not None and expert.initial_val_loss == start
        losses = [r.val_loss for r in admin.rounds(expert.run_id)]
        assert losses[-1] is not None and losses[-1] < start, (start, losses)  # in-domain loss falls
    expert_session, expert_client = loops[2].session, clients[2]
    assert expert_session.trained_names and all(".experts.alpha." in n for n in expert_session.trained_names)
    expert_blob = admin.version(alpha.run_id, 0).nbytes
    # an expert's worker downloads the trunk's final version and its expert's changes, nothing else
    assert expert_client.bytes_down <= trunk_final.nbytes + expert_blob
    assert expert_client.bytes_up <= 2 * expert_blob * 1.05  # two rounds of its expert's update only


def test_sample_and_export_choose_experts(
    http: TestClient, admin: HubClient, corpus_dir: Path, tmp_path: Path
) -> None:
    run_id = admin.create_run(modular_recipe(corpus_dir)).run_id
    status = admin.status(run_id)
    parts = [from_bytes(admin.blob(m.latest_version.blob_sha256, m.run_id)) for m in status.modules]  # type: ignore[union-attr]
    recipe = parse_recipe(status.recipe)
    routed = assemble(recipe, parts)
    only_beta = assemble(recipe, parts, ["beta"])
    assert any(".experts.alpha." in k for k in routed.state_dict())
    assert not any(".experts.alpha." in k for k in only_beta.state_dict())  # opted out: left out
    x = torch.randint(0, 256, (1, 16))
    assert torch.allclose(routed(x).exp().sum(-1), torch.ones(1, 16), atol=1e-5)
    with pytest.raises(ConfigError, match="no experts"):
        assemble(recipe, parts, ["gamma"])


@pytest.mark.parametrize(
    "change, message",
    [
        (("blocks.*.experts.beta.*", "blocks.*.experts.bet.*"), "no module.s params match"),
        (
            (
                'model_options = { experts = ["beta"] }',
                'model_options = { experts = ["beta"], d_model = 32 }',
            ),
            "start differently",
        ),
        (('shards = ["beta"]', 'shards = ["gamma"]'), "no shard or dataset version 'gamma'"),
        (('shards = ["alpha"]', 'shards = ["alpha"]\nowner = "nobody"'), "no provider named"),
        (("[modules.beta]", '[modules.ghost]\nparams = ["nothing.*"]\n\n[modules.beta]'), "match no tensor"),
    ],
)
def test_bad_modular_recipes_are_refused_at_creation(
    admin: HubClient, corpus_dir: Path, change: tuple[str, str], message: str
) -> None:
    text = modular_recipe(corpus_dir)
    assert change[0] in text
    with pytest.raises(ConfigError, match=message):
        admin.create_run(text.replace(*change))
    assert admin.runs() == []


# --- merges -------------------------------------------------------------------------------


def trained_modular_run(http: TestClient, admin: HubClient, corpus_dir: Path, tmp_path: Path) -> str:
    """Trunk by two workers, then experts alpha and beta by one each; ``general`` is left untrained."""
    text = modular_recipe(corpus_dir).replace(
        'experts = ["alpha", "beta"]', 'experts = ["alpha", "beta", "general"]'
    )
    run_id = admin.create_run(text + GENERAL).run_id
    loops = []
    for i, module in enumerate(["trunk", "trunk", "alpha", "beta"]):
        client = HubClient(http, admin.create_provider(f"m{i}").token, retry_s=0, run_id=run_id)
        loops.append(
            WorkLoop(
                client,
                WorkerSettings(
                    tmp_path / f"m{i}", name=f"m{i}", wait_s=2, module=module, trust=reading(corpus_dir)
                ),
            )
        )
    assert not run_loops(loops)
    return run_id


def test_merges_are_validated_versioned_steps(
    http: TestClient, admin: HubClient, corpus_dir: Path, tmp_path: Path
) -> None:
    run_id = trained_modular_run(http, admin, corpus_dir, tmp_path)
    general = next(m for m in admin.status(run_id).modules if m.module == "general")
    assert general.status == "active" and general.rounds_done == 0
    outsider = HubClient(http, admin.create_provider("outsider").token, retry_s=0)
    request = MergeRequest(target="general", inputs=["alpha", "beta"], method="average")
    with pytest.raises(Forbidden, match="only the run's owner"):
        outsider.merge(run_id, request)
    with pytest.raises(ConfigError, match="structure"):
        admin.merge(run_id, MergeRequest(target="general", inputs=["trunk"]))
    # a merge that makes the held-out loss worse is recorded and rejected; nothing changes
    wild = admin.merge(
        run_id, MergeRequest(target="general", inputs=["alpha", "beta"], method="task_arithmetic", scale=-40)
    )
    assert (
        wild.status == "rejected"
        and wild.val_loss_after > (wild.val_loss_before or 0)
        and wild.version is None
    )
    assert admin.version(general.run_id).number == 0
    # an average of the two experts helps the general expert: accepted as its version 1
    reply = admin.merge(run_id, request)
    assert reply.status == "accepted", reply
    assert reply.val_loss_before is not None and reply.val_loss_after <= reply.val_loss_before
    version = admin.version(general.run_id)
    assert reply.version is not None and version.number == 1 and version.merge_id == reply.merge_id
    assert (
        version.parent_id == admin.version(general.run_id, 0).version_id
        and version.val_loss == reply.val_loss_after
    )
    assert [i.module for i in reply.inputs] == ["alpha", "beta"] and all(i.number == 2 for i in reply.inputs)
    history = admin.merges(run_id)
    assert [m.status for m in history] == ["rejected", "accepted"]
    # the merged expert is the mean of the two, paired by structure
    tensors = from_bytes(admin.blob(version.blob_sha256, general.run_id))
    alpha, beta = (
        from_bytes(admin.blob(admin.version(m.run_id).blob_sha256, m.run_id))
        for m in admin.status(run_id).modules
        if m.module in ("alpha", "beta")
    )
    name = "blocks.0.experts.general.0.weight"
    mean = (alpha[name.replace("general", "alpha")] + beta[name.replace("general", "beta")]) / 2
    assert torch.allclose(tensors[name], mean)
    status = admin.status(run_id)
    assert status.status == "finished"  # general had one round: the merge finished it, and the run


def test_merge_methods() -> None:
    base = {"w": torch.zeros(6)}
    a = {"w": torch.tensor([1.0, -2.0, 0.1, 0.0, 3.0, -0.2])}
    b = {"w": torch.tensor([1.0, 2.0, -0.1, 0.0, -1.0, -0.2])}
    assert torch.allclose(merge(base, [a, b], MergeSettings("average"))["w"], (a["w"] + b["w"]) / 2)
    arith = merge(base, [a, b], MergeSettings("task_arithmetic", scale=0.5))["w"]
    assert torch.allclose(arith, 0.5 * (a["w"] + b["w"]))
    tied = merge(base, [a, b], MergeSettings("ties", density=0.5))["w"]
    # kept: a's 3 largest (3, -2, 1), b's (2, 1, -1); signs elected per coordinate; disjoint mean
    assert torch.allclose(tied, torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 0.0]))
    with pytest.raises(ConfigError, match="method"):
        MergeSettings("soup")
    with pytest.raises(ConfigError, match="2 merge weights"):
        merge(base, [a], MergeSettings("average", weights=(1.0, 2.0)))


def test_modules_of_a_model_without_model_options(
    http: TestClient, admin: HubClient, corpus_dir: Path, tmp_path: Path
) -> None:
    """Any nn.Module: the plain byte LM split into a shared body and an owner's output layer,
    trained on top of the final body (the module map names tensors; nothing model-specific)."""
    recipe = (
        tiny_recipe(corpus_dir, rounds=2, quorum=1)
        + """
[modules.body]
params = ["tok.*", "pos.*", "blocks.*"]

[modules.readout]
params = ["ln_f.*", "head.*"]
depends = ["body"]
"""
    )
    run_id = admin.create_run(recipe).run_id
    loops = [
        WorkLoop(
            HubClient(http, admin.create_provider(f"g{i}").token, retry_s=0, run_id=run_id),
            WorkerSettings(
                tmp_path / f"g{i}", name=f"g{i}", wait_s=2, module=module, trust=reading(corpus_dir)
            ),
        )
        for i, module in enumerate(["body", "readout"])
    ]
    assert not run_loops(loops)
    body, readout = admin.status(run_id).modules
    assert body.status == readout.status == "finished"
    assert loops[1].session.trained_names == {"ln_f.weight", "ln_f.bias", "head.weight"}
    assert loops[1].session.client.bytes_up < 2 * readout.latest_version.nbytes * 1.05  # type: ignore[union-attr, attr-defined]
    losses = [r.val_loss for r in admin.rounds(readout.run_id)]
    assert (
        losses[-1] is not None
        and readout.initial_val_loss is not None
        and losses[-1] < readout.initial_val_loss
    )


def test_a_modular_run_is_charged_every_model_it_makes_the_hub_hold(
    service: HubService, corpus_dir: Path
) -> None:
    text = modular_recipe(corpus_dir)
    recipe = parse_recipe(text)
    held = model_bytes(recipe) + sum(model_bytes(recipe.for_module(m)) for m in recipe.modules)

    def hub(limit: int) -> HubService:
        config = HubConfig(service.trust, HubLimits(max_model_bytes=limit))
        return HubService(service.state, service.store, config=config)

    admin = service.providers.principal(service.providers.bootstrap_admin())
    with pytest.raises(ConfigError, match="max_model_bytes"):
        hub(held - 1).create_run(admin, text)
    run_id = hub(held).create_run(admin, text).run_id
    with service.state.transaction() as s:
        assert s.get(Run, run_id).model_bytes == held  # type: ignore[union-attr]


def test_a_rebuilt_module_runtime_evaluates_on_its_dependencies(
    http: TestClient, admin: HubClient, service: HubService, corpus_dir: Path, tmp_path: Path
) -> None:
    """A hub that restarted (or dropped the runtime from its cache) loads the final versions a
    module trains on before it evaluates or probes the module."""
    run_id = trained_modular_run(http, admin, corpus_dir, tmp_path)
    modules = {m.module: m for m in admin.status(run_id).modules}
    alpha, trunk = modules["alpha"], modules["trunk"]
    assert alpha.latest_version is not None and trunk.latest_version is not None
    restarted = HubService(service.state, service.store, config=service.config)
    runtime = restarted.runtime(alpha.run_id)
    assert runtime.frozen_ids == (trunk.latest_version.version_id,)
    tensors = from_bytes(service.store.get(alpha.latest_version.blob_sha256))
    assert runtime.evaluate(tensors) == pytest.approx(alpha.latest_version.val_loss, rel=1e-5)
