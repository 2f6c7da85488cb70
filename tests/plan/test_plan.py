"""Planner: topology files, cost formulas, model profiles, level choices, simulator, CLI."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient
from torch import nn
from typer.testing import CliRunner

from tessera.api.client import HubClient
from tessera.cli import app
from tessera.core.inner import mse
from tessera.core.schedule import RunSchedule
from tessera.core.tensors import to_bytes
from tessera.errors import ConfigError
from tessera.plan.cost import (
    bytes_per_hour,
    diloco_round_s,
    diloco_utilization,
    memory_per_parameter,
    min_inner_steps,
    ring_allreduce_s,
    step_s,
    transfer_s,
)
from tessera.plan.planner import (
    DILOCO,
    MODULES,
    SINGLE,
    SYNC,
    Plan,
    Planner,
    PlanSettings,
    Workload,
    make_plan,
)
from tessera.plan.profile import (
    WIRE_FORMATS,
    ModelProfile,
    parameters_per_module,
    profile_model,
    run_bytes,
    wire_format_of,
)
from tessera.plan.simulator import ChurnEvent, SimSettings, simulate
from tessera.plan.topology import TopologyError, Window, load_topology, parse_topology, parse_window
from tessera.recipe import parse_recipe, with_plan
from tessera.worker.probe import matmul_flops, measure_link
from tests.helpers import join, meta, tiny_recipe, work, zero_update

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "topologies").glob("*.toml"))

# --- topology files ------------------------------------------------------------------------


def topo(groups: str = "", nodes: str = "", hub_flops: float = 1e18) -> str:
    """A topology whose hub evaluates in no time (unless hub_flops says otherwise)."""
    head = f'name = "t"\n[hub]\nflops = {hub_flops}\n'
    return f'{head}[[group]]\nname = "root"\nkind = "federation"\n{groups}\n{nodes}'


NODE = '[[node]]\nname = "{name}"\ngroup = "{group}"\nflops = {flops}\nmemory_gb = 16\nlink = {{ latency_ms = {lat}, bandwidth_mbit = {bw} }}\n{extra}\n'  # noqa: E501
GROUP = '[[group]]\nname = "{name}"\nkind = "{kind}"\nparent = "{parent}"\nlink = {{ latency_ms = {lat}, bandwidth_mbit = {bw} }}\n'  # noqa: E501


def node(
    name: str, group: str = "root", flops: float = 1e12, lat: float = 1, bw: float = 100, extra: str = ""
) -> str:
    return NODE.format(name=name, group=group, flops=flops, lat=lat, bw=bw, extra=extra)


def group(name: str, parent: str = "root", kind: str = "machine", lat: float = 0.01, bw: float = 1e5) -> str:
    return GROUP.format(name=name, parent=parent, kind=kind, lat=lat, bw=bw)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_topologies_load(path: Path) -> None:
    t = load_topology(path)
    assert t.nodes and t.root in t.groups
    assert all(t.groups[n.group] for n in t.nodes.values())


def test_count_expands_nodes_and_windows_parse() -> None:
    t = parse_topology(topo(nodes=node("gpu", extra='count = 3\navailability = ["22:00-07:00 UTC"]')))
    assert sorted(t.nodes) == ["gpu-0", "gpu-1", "gpu-2"]
    assert t.nodes["gpu-1"].available_minutes == 9 * 60
    assert t.nodes["gpu-1"].available(23 * 60) and not t.nodes["gpu-1"].available(12 * 60)
    assert parse_window("always").minutes == 24 * 60
    assert Window(60, 120).covers(90) and not Window(60, 120).covers(120)


@pytest.mark.parametrize(
    "text, message",
    [
        (topo(nodes=node("a", group="nowhere")), "group 'nowhere' is not a group"),
        (topo(groups=group("g", parent="nowhere"), nodes=node("a", group="g")), "parent 'nowhere'"),
        (topo(nodes=node("a") + node("a")), "the name is taken"),
        (topo(nodes=node("a", extra='availability = ["25:00-07:00"]')), "impossible time"),
        (topo(nodes=node("a", extra='availability = ["nights"]')), "must look like '22:00-07:00 UTC'"),
        (topo(nodes=node("a", bw=-5)), "bandwidth_mbit must be a positive number"),
        (topo(nodes=node("a", lat=-1)), "latency_ms must be a number >= 0"),
        (topo(nodes=node("a", extra="colour = 1")), "unknown keys ['colour']"),
        (topo(groups=group("empty"), nodes=node("a")), "hold no nodes"),
        (topo(), "at least one [[node]]"),
        (topo(groups='[[group]]\nname = "r2"\n', nodes=node("a")), "exactly one group must have no parent"),
        (
            topo(groups=group("x", parent="y") + group("y", parent="x"), nodes=node("a", group="x")),
            "cycle",
        ),
        ('name = "t"\n[[group]]\nname = "r"\nlink = { latency_ms = 1, bandwidth_mbit = 1 }\n', "root group"),
        (topo(nodes=node("bad name")), "name 'bad name'"),
        ("name = ", "not valid TOML"),
    ],
)
def test_bad_topologies_say_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(TopologyError, match=None) as info:
        parse_topology(text)
    assert message in str(info.value)


# --- cost model -----------------------------------------------------------------------------


def test_ring_allreduce_formula() -> None:
    # 4 peers, 1 GB at 10 GB/s, 1 ms: 2*3/4 * 0.1 s + 2*3 * 1 ms = 0.156 s
    assert ring_allreduce_s(1e9, 4, 1e10, 1e-3) == pytest.approx(0.156)
    assert ring_allreduce_s(1e9, 1, 1e10, 1e-3) == 0.0
    with pytest.raises(ValueError):
        ring_allreduce_s(1e9, 0, 1e10, 1e-3)


def test_diloco_round_utilization_and_smallest_h() -> None:
    assert diloco_round_s(100, 0.5, 10.0) == 60.0
    assert diloco_utilization(100, 0.5, 10.0) == pytest.approx(50 / 60)
    h = min_inner_steps(0.9, 0.5, 10.0)  # 0.9/0.1 * 10/0.5 = 180
    assert h == 180
    assert diloco_utilization(h, 0.5, 10.0) >= 0.9 > diloco_utilization(h - 1, 0.5, 10.0)
    with pytest.raises(ConfigError):
        min_inner_steps(1.0, 0.5, 10.0)


def test_transfer_bytes_per_hour_and_step_time() -> None:
    assert transfer_s(1e6, 1e6, 0.05) == pytest.approx(1.05)
    assert bytes_per_hour(1e6, 60.0) == pytest.approx(6e7)
    assert step_s(1e12, 1e13, 0.5) == pytest.approx(0.2)


def test_memory_per_parameter() -> None:
    assert memory_per_parameter(diloco=False).total == 16  # 4 + 4 + 8 (AdamW m, v)
    assert memory_per_parameter().total == 20  # + DiLoCo's base copy
    mixed = memory_per_parameter(mixed_precision=True, diloco=False)
    assert (mixed.weights, mixed.gradients, mixed.optimizer) == (2, 2, 12)
    with pytest.raises(ConfigError, match="optimizer 'lion'"):
        memory_per_parameter("lion")


# --- model profiles -------------------------------------------------------------------------


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64, bias=False), nn.ReLU(), nn.Linear(64, 8, bias=False))


def test_profile_of_any_module_counts_6n_flops() -> None:
    model = mlp()
    batch = (torch.randn(10, 32), torch.randn(10, 8))
    profile = profile_model(model, batch, mse)
    n = 32 * 64 + 64 * 8
    assert profile.parameters == profile.trainable == n
    assert parameters_per_module(model) == {"0": 32 * 64, "1": 0, "2": 64 * 8}
    assert profile.flops_source == "measured"
    # forward 2N per sample; backward 4N, except that the first layer needs no input gradient
    # (2 x its weights): counted, not assumed. 10 samples of 8 targets each.
    first, second = 32 * 64, 64 * 8
    assert profile.flops_per_token == (2 * n + 4 * second + 2 * first) * 10 / 80
    assert profile.activation_bytes_per_sample == (64 + 64 + 8) * 4
    assert profile.sync_bytes("fp32") == 4 * n
    assert profile.sync_bytes("bf16") == 2 * n


def test_wire_format_sizes() -> None:
    assert WIRE_FORMATS["int8"].nbytes(1024) == 1024 + 4 * 4  # 4 blocks of 256, fp32 scales
    assert WIRE_FORMATS["int4"].nbytes(128) == 64 + 2 * 4
    assert WIRE_FORMATS["topk1"].nbytes(10_000) == 100 * (2 + 4)


# --- the planner ----------------------------------------------------------------------------

FLOPS_PER_TOKEN = 6e6  # a 1M-parameter model


def profile(params: int = 1_000_000) -> ModelProfile:
    return ModelProfile(
        parameters=params,
        trainable=params,
        per_module={"trunk": params},
        flops_per_token=6.0 * params,
        flops_source="formula",
        activation_bytes_per_sample=1e5,
        tokens_per_sample=100,
        tensor_numels=(params,),
    )


WORKLOAD = Workload(batch_size=10, inner_steps=100, quorum=1, eval_tokens=1000)
SETTINGS = PlanSettings(target_utilization=0.9, efficiency=1.0)


def plan_for(text: str, settings: PlanSettings = SETTINGS, workload: Workload = WORKLOAD) -> Plan:
    return make_plan(parse_topology(text), profile(), workload, settings)


def test_fast_machine_trains_synchronously_and_slow_links_get_diloco() -> None:
    # step: 1000 tokens * 6e6 FLOPs / 1e12 FLOP/s = 6 ms; a 4 MB gradient over 100 Gbit/s: < 1 ms
    text = topo(
        groups=group("box", lat=1, bw=10000),
        nodes=node("gpu", group="box", lat=0.001, bw=1e5, extra="count = 2")
        + node("far", lat=50, bw=1000, flops=5e11),
    )
    p = plan_for(text)
    levels = {lv.group: lv for lv in p.levels}
    assert levels["box"].strategy == SYNC
    assert (levels["box"].latency_class, levels["box"].work_class) == ("low-latency", "exponent")
    assert levels["root"].strategy == DILOCO
    assert (levels["root"].latency_class, levels["root"].work_class) == ("high-latency", "linear")
    assert p.worker_inner_steps.keys() == {"box", "far"}
    assert p.utilization >= 0.9
    units = {u.name: u for u in p.units}
    # fast and slow units end their round together (within one slow step)
    ends = [u.compute_s + u.sync_s for u in units.values()]
    assert max(ends) - min(ends) <= units["far"].step_s + 1e-9
    assert units["far"].inner_steps < units["box"].inner_steps
    assert [m.work_class for m in p.modules] == ["exponent"]


def test_planner_picks_the_smallest_h_and_compresses_only_when_needed() -> None:
    # 6 ms steps; 4 MB over 1 Gbit/s each way plus 6 x 20 ms: 0.184 s; H >= 9 * 0.184 / 0.006 = 276
    text = topo(nodes=node("a", lat=20, bw=1000) + node("b", lat=20, bw=1000))
    p = plan_for(text)
    assert (p.wire_format, p.inner_steps) == ("fp32", 276)
    fp32_only = plan_for(text, PlanSettings(efficiency=1.0, max_inner_steps=275, wire_formats=("fp32",)))
    assert fp32_only.wire_format == "fp32" and fp32_only.utilization < 0.9
    tight = plan_for(text, PlanSettings(efficiency=1.0, max_inner_steps=275))
    assert tight.wire_format == "bf16" and tight.utilization == pytest.approx(0.9)
    loose = plan_for(text, PlanSettings(target_utilization=0.5, efficiency=1.0))
    assert loose.inner_steps < p.inner_steps


def test_slow_sync_group_becomes_diloco_and_hopeless_link_trains_a_module() -> None:
    text = topo(
        groups=group("slowbox", lat=1, bw=1000),
        nodes=node("x", group="slowbox", lat=5, bw=100, extra="count = 2")  # 100 Mbit between GPUs
        + node("fast", lat=1, bw=1000)
        + node("dialup", lat=300, bw=0.05),
    )
    p = plan_for(text)
    levels = {lv.group: lv.strategy for lv in p.levels}
    assert levels["slowbox"] == DILOCO
    units = {u.name: u.strategy for u in p.units}
    assert units["dialup"] == MODULES
    assert units["x-0"] == units["fast"] == DILOCO
    assert any("dialup trains an independent module" in w for w in p.warnings)


def test_planning_changes_nothing_it_is_given() -> None:
    """The search compares sizings without writing them into units or the topology: one planner
    plans twice alike, and the topology is as parsed."""
    text = topo(
        groups=group("slowbox", lat=1, bw=1000),
        nodes=node("x", group="slowbox", lat=5, bw=100, extra="count = 2")
        + node("fast", lat=1, bw=1000)
        + node("dialup", lat=300, bw=0.05),
    )
    topology = parse_topology(text)
    planner = Planner(topology, profile(), WORKLOAD, SETTINGS)
    first, second = (
        planner.plan().to_json(),
        Planner(topology, profile(), WORKLOAD, SETTINGS).plan().to_json(),
    )
    assert first == second
    assert topology == parse_topology(text)
    units = planner.frontier(topology.root)
    before = copy.deepcopy(units)
    planner.choose_round(units)
    assert units == before


def test_single_member_groups_and_memory_and_windows() -> None:
    text = topo(
        groups=group("solo"),
        nodes=node("only", group="solo", lat=1, bw=1000)
        + node(
            "night", lat=1, bw=1000, extra='availability = ["22:00-06:00 UTC"]\nmemory_gb = 0.001'
        ).replace("memory_gb = 16\n", "", 1),
    )
    workload = Workload(batch_size=10, inner_steps=100, quorum=2, eval_tokens=1000)
    p = plan_for(text, workload=workload)
    assert {lv.group: lv.strategy for lv in p.levels}["solo"] == SINGLE
    nodes = {n.name: n for n in p.nodes}
    assert not nodes["night"].fits and nodes["only"].fits
    assert any("night needs" in w for w in p.warnings)
    # with a quorum of 2 rounds run only while both are up: 'only' idles 16 of its 24 hours
    assert nodes["only"].idle_h == pytest.approx(16)
    assert nodes["night"].idle_h == pytest.approx(0)


def test_plan_json_round_trips() -> None:
    p = plan_for(topo(nodes=node("a") + node("b")))
    data = json.loads(json.dumps(p.to_json()))
    assert data["worker_inner_steps"] == p.worker_inner_steps
    assert {"levels", "units", "links", "nodes", "modules", "round_s", "utilization"} <= data.keys()
    assert all(link["load"] >= 0 for link in data["links"])


def test_plan_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="target_utilization"):
        PlanSettings(target_utilization=1.5)
    with pytest.raises(ConfigError, match="wire formats"):
        PlanSettings(wire_formats=("zip",))


# --- simulator ------------------------------------------------------------------------------

TWO = topo(nodes=node("a", lat=20, bw=100) + node("b", lat=20, bw=100, flops=5e11))


def test_simulator_matches_the_plan_in_steady_state() -> None:
    p = plan_for(TWO)
    result = simulate(p, parse_topology(TWO), SimSettings(rounds=10))
    assert result.complete and result.rounds == 10
    assert result.wall_s == pytest.approx(10 * p.round_s, rel=1e-6)
    assert result.contributions == {"a": 10, "b": 10}


def test_stragglers_slow_the_run_down() -> None:
    p = plan_for(TWO)
    calm = simulate(p, parse_topology(TWO), SimSettings(rounds=20))
    noisy = simulate(p, parse_topology(TWO), SimSettings(rounds=20, straggler_sigma=0.3, seed=1))
    assert noisy.wall_s > calm.wall_s


def test_windows_and_churn() -> None:
    text = topo(
        nodes=node("a", lat=20, bw=100) + node("b", lat=20, bw=100, extra='availability = ["02:00-03:00"]')
    )
    topology = parse_topology(text)
    p = plan_for(text)
    waited = simulate(p, topology, SimSettings(rounds=3))
    assert waited.wall_s >= 2 * 3600  # b is first up at 02:00
    ignored = simulate(p, topology, SimSettings(rounds=3, windows=False))
    assert ignored.wall_s == pytest.approx(3 * p.round_s)
    # b leaves mid-round for good: with a quorum of 1, a carries on alone
    churn = (ChurnEvent(p.round_s * 1.5, "b", "leave"),)
    left = simulate(p, topology, SimSettings(rounds=4, quorum=1, windows=False, churn=churn))
    assert left.contributions["b"] < left.contributions["a"] and left.lost_work_s > 0
    # with a deadline, rounds close without the unit that left
    stuck = simulate(
        p, topology, SimSettings(rounds=4, windows=False, churn=churn, round_deadline_s=2 * p.round_s)
    )
    assert stuck.complete and stuck.contributions["b"] == 1
    with pytest.raises(ConfigError, match="not a DiLoCo unit"):
        simulate(p, topology, SimSettings(rounds=1, churn=(ChurnEvent(1.0, "zz", "join"),)))


def test_a_fractional_quorum_trains_whenever_a_unit_is_up() -> None:
    text = topo(
        groups=group("solo"),
        nodes=node("only", group="solo", lat=1, bw=1000)
        + node("night", lat=1, bw=1000, extra='availability = ["22:00-06:00 UTC"]'),
    )
    counted = plan_for(text, workload=replace(WORKLOAD, quorum=2))
    elastic = plan_for(text, workload=replace(WORKLOAD, quorum=0.5))
    assert {n.name: n.idle_h for n in counted.nodes} == {"only": pytest.approx(16), "night": 0}
    assert {n.name: n.idle_h for n in elastic.nodes} == {"only": 0, "night": 0}
    with pytest.raises(ConfigError, match="run.quorum"):
        replace(WORKLOAD, quorum=1.5)
    with pytest.raises(ConfigError, match="simulate quorum"):
        SimSettings(rounds=1, quorum=0)


def test_a_fractional_quorum_keeps_the_pace_when_units_leave() -> None:
    """Two of four units leave for good in round 1: a quorum of all four waits out every deadline
    from then on; quorum = 0.99 of the active units does for two rounds (the units that left count
    for the round after their last lease), then closes at the plan's pace again."""
    text = topo(nodes="".join(node(name, lat=20, bw=100) for name in "abcd"))
    p, topology = plan_for(text), parse_topology(text)
    churn = tuple(ChurnEvent(1.5 * p.round_s, name, "leave") for name in "cd")
    deadline = 3 * p.round_s

    def rounds_s(quorum: int | float) -> list[float]:
        settings = SimSettings(rounds=6, quorum=quorum, windows=False, churn=churn, round_deadline_s=deadline)
        result = simulate(p, topology, settings)
        assert result.complete
        return [round(s / p.round_s, 3) for s in result.round_s]

    assert rounds_s(4) == [1, 3, 3, 3, 3, 3]
    assert rounds_s(0.99) == [1, 3, 3, 1, 1, 1]


# --- recipes, the hub and the CLI -----------------------------------------------------------


def test_hub_gives_each_planned_worker_its_inner_steps(
    http: TestClient, admin: HubClient, corpus_dir: Path
) -> None:
    text = with_plan(tiny_recipe(corpus_dir, quorum=2), "lab", {"fast": 40, "slow": 10})
    run_id = admin.create_run(text).run_id
    steps = {}
    for name in ("fast", "slow", "unplanned"):
        client, worker_id = join(http, admin, run_id, name)
        steps[name] = work(client, worker_id).inner_steps
    assert steps == {"fast": 40, "slow": 10, "unplanned": 3}


def test_recipe_plan_section_is_validated(corpus_dir: Path) -> None:
    with pytest.raises(ConfigError, match="plan.inner_steps.a must be an integer"):
        parse_recipe(tiny_recipe(corpus_dir) + "\n[plan]\ninner_steps = { a = 0 }\n")
    planned = with_plan(tiny_recipe(corpus_dir), "lab", {"a": 5}, "int8")
    with pytest.raises(ConfigError, match="has a \\[plan\\] section already"):
        with_plan(planned, "lab", {"a": 5})
    recipe = parse_recipe(planned)  # the plan's wire format both ways, unless the recipe chose
    assert (recipe.communication.codec, recipe.communication.download_codec) == ("int8", "int8")
    own = tiny_recipe(corpus_dir, extra='[communication]\ncodec = "bf16"\n')
    assert parse_recipe(with_plan(own, "lab", {"a": 5}, "int8")).communication.codec == "bf16"


def test_run_bytes_count_every_rounds_contribution_and_change_against_data_parallel() -> None:
    p = profile(1_000_000)
    schedule = RunSchedule(inner_steps=100, by_round=(25, 25, 50), rounds=10)  # 100 + 7 x 100 nominal steps
    b = run_bytes(p, schedule, "int3", "sign")
    # int3: 3 bits and a 16-bit scale per 256 values; sign: 1 bit and a 16-bit scale per 256
    assert b.upload == 10 * math.ceil((3 * 1_000_000 + 16 * 3907) / 8)
    assert b.download == 10 * math.ceil((1_000_000 + 16 * 3907) / 8)
    assert b.steps == 800 and b.data_parallel == 2 * 4 * 1_000_000 * 800
    assert b.ratio == pytest.approx(b.data_parallel / (b.upload + b.download))
    assert wire_format_of("topk2.5").nbytes(1000) == 25 * (2 + 4)
    with pytest.raises(ConfigError, match="codec 'zip' unknown"):
        wire_format_of("zip")


def test_probe_measures_flops_and_the_link(admin: HubClient) -> None:
    assert matmul_flops(torch.device("cpu"), size=256, repeats=2) > 1e8
    link = measure_link(admin, nbytes=1 << 20, pings=2)
    assert link.latency_ms >= 0 and link.download_mbit > 0 and link.upload_mbit > 0


runner = CliRunner()


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_cli_plan_and_simulate_on_the_examples(path: Path, tmp_path: Path) -> None:
    recipe = str(ROOT / "examples" / "lm_100m.toml")
    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["plan", str(path), "--recipe", recipe, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "levels" in result.output and "units" in result.output
    data = json.loads(out.read_text())
    assert data["worker_inner_steps"] and 0 < data["utilization"] <= 1
    whole = data["run_bytes"]  # the recipe has no [communication]: the plan's format both ways
    assert whole["codecs"] == f"{data['wire_format']}/{data['wire_format']}" and whole["ratio"] > 1
    assert "per-step data parallel" in result.output
    sim_out = tmp_path / "sim.json"
    args = [
        "simulate",
        str(path),
        "--recipe",
        recipe,
        "--rounds",
        "5",
        "--straggler",
        "0.1",
        "--json",
        str(sim_out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    sim = json.loads(sim_out.read_text())
    assert sim["rounds"] == 5 and sim["complete"] and math.isfinite(sim["wall_s"])


def test_cli_probe_prints_a_node_entry_the_topology_parser_accepts(tmp_path: Path) -> None:
    result = runner.invoke(app, ["probe", "--name", "box", "--group", "root"])
    assert result.exit_code == 0, result.output
    entry = result.output
    parse_topology('name = "t"\n[[group]]\nname = "root"\n' + entry)


def test_cli_plan_reports_a_bad_topology(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(topo(nodes=node("a", bw=0)))
    cmd = [
        sys.executable,
        "-m",
        "tessera",
        "plan",
        str(bad),
        "--recipe",
        str(ROOT / "examples" / "stdlib_lm.toml"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert "bandwidth_mbit must be a positive number" in " ".join(result.stderr.split())
    assert not (tmp_path / "plan.json").exists()


def test_hub_sizes_inner_steps_from_measured_step_times(
    http: TestClient, admin: HubClient, corpus_dir: Path
) -> None:
    recipe = tiny_recipe(corpus_dir, quorum=2, inner_steps=30, extra_run="balance_steps = true")
    run_id = admin.create_run(recipe).run_id
    workers = {name: join(http, admin, run_id, name) for name in ("fast", "slow")}
    for name, (client, worker_id) in workers.items():
        grant = work(client, worker_id)
        assert grant.inner_steps == 30  # nothing measured yet
        step_s = 0.1 if name == "fast" else 0.3
        m = meta(grant, worker_id).model_copy(update={"steps": 30, "compute_s": 30 * step_s})
        assert client.submit(m, to_bytes(zero_update(client, grant))).status == "accepted"
    steps = {name: work(client, worker_id).inner_steps for name, (client, worker_id) in workers.items()}
    assert steps == {"fast": 30, "slow": 10}  # both about 3 s of compute


def test_a_worker_that_claims_impossibly_fast_steps_does_not_shrink_the_others(
    http: TestClient, admin: HubClient, corpus_dir: Path
) -> None:
    recipe = tiny_recipe(corpus_dir, quorum=3, inner_steps=30, extra_run="balance_steps = true")
    run_id = admin.create_run(recipe).run_id
    step_s = {"fast": 0.1, "slow": 0.3, "liar": 1e-6}
    workers = {name: join(http, admin, run_id, name) for name in step_s}
    for name, (client, worker_id) in workers.items():
        grant = work(client, worker_id)
        m = meta(grant, worker_id).model_copy(update={"steps": 30, "compute_s": 30 * step_s[name]})
        assert client.submit(m, to_bytes(zero_update(client, grant))).status == "accepted"
    steps = {name: work(client, worker_id).inner_steps for name, (client, worker_id) in workers.items()}
    assert steps == {"fast": 30, "slow": 10, "liar": 30}  # the claim is not the yardstick, nor rewarded
