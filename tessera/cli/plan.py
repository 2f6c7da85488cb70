"""`tessera plan`, `tessera simulate` and `tessera probe`: the planning commands of the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tessera.cli.app import app, console
from tessera.errors import ConfigError
from tessera.plan.planner import DEFAULT_WIRE_FORMATS, Plan, PlanSettings, Workload, make_plan
from tessera.plan.profile import WIRE_FORMATS, ModelProfile, RunBytes, profile_recipe, run_bytes
from tessera.plan.simulator import ChurnEvent, SimResult, SimSettings, simulate
from tessera.plan.topology import Topology, load_topology, parse_window
from tessera.recipe import Recipe, load_recipe
from tessera.settings import read_toml
from tessera.task import configure_torch

MAX_LINK_ROWS = 10

TopologyArg = Annotated[Path, typer.Argument(help="Topology TOML file")]
RecipeOpt = Annotated[Path, typer.Option("--recipe", help="Run recipe TOML")]
TargetOpt = Annotated[float, typer.Option(help="Target compute utilization (0-1)")]
WireOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--wire-format",
        help="A wire format the plan may use, least lossy first (repeat); default: "
        f"{', '.join(DEFAULT_WIRE_FORMATS)}. Known: {', '.join(WIRE_FORMATS)}",
    ),
]
EfficiencyOpt = Annotated[
    float, typer.Option(help="Share of matmul FLOP/s a training step reaches (tessera probe --recipe)")
]


def workload(recipe: Recipe, profile: ModelProfile) -> Workload:
    eval_tokens = recipe.eval.batch_size * recipe.eval.batches * profile.tokens_per_sample
    return Workload(recipe.train.batch_size, recipe.train.inner_steps, recipe.run.quorum, eval_tokens)


def build_plan(
    topology_path: Path, recipe_path: Path, settings: PlanSettings, measure_flops: bool
) -> tuple[Topology, Recipe, Plan, ModelProfile]:
    topology = load_topology(topology_path)
    recipe = load_recipe(recipe_path)
    profile = profile_recipe(recipe, measure_flops)
    return topology, recipe, make_plan(topology, profile, workload(recipe, profile), settings), profile


def planned_run_bytes(recipe_path: Path, recipe: Recipe, profile: ModelProfile, chosen: str) -> RunBytes:
    """A worker's bytes over the run as it will be created with the plan: the recipe's own codecs
    if it has a [communication] section, else the plan's wire format both ways (``with_plan``);
    its rounds and H per round (``train.inner_steps_by_round``)."""
    if "communication" in read_toml(recipe_path.read_text(), "recipe"):
        up, down = recipe.communication.codec, recipe.communication.download_codec
    else:
        up = down = chosen
    return run_bytes(profile, recipe.schedule, up, down)


@app.command("plan")
def plan(
    topology: TopologyArg,
    recipe: RecipeOpt,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the plan")] = Path("plan.json"),
    target: TargetOpt = 0.9,
    efficiency: EfficiencyOpt = 0.3,
    max_inner_steps: Annotated[int, typer.Option(help="Largest H the planner may choose")] = 1000,
    measure_flops: Annotated[bool, typer.Option(help="Count FLOPs with PyTorch instead of 6N")] = False,
    wire_format: WireOpt = None,
) -> None:
    """Choose how each level of TOPOLOGY trains RECIPE; predict time, utilization and bytes."""
    settings = PlanSettings(
        target_utilization=target,
        efficiency=efficiency,
        max_inner_steps=max_inner_steps,
        wire_formats=tuple(wire_format or DEFAULT_WIRE_FORMATS),
    )
    _, parsed, result, profile = build_plan(topology, recipe, settings, measure_flops)
    print_plan(result)
    whole = planned_run_bytes(recipe, parsed, profile, result.wire_format)
    print_run_bytes(whole)
    json_path.write_text(json.dumps({**result.to_json(), "run_bytes": whole.to_json()}, indent=2))
    console.print(
        f"plan written to {json_path}; attach it with: tessera create-run RECIPE --plan {json_path}"
    )


def read_plan(path: Path) -> tuple[str, dict[str, int], str]:
    """The topology name, per-worker inner steps and wire format of a plan JSON file."""
    try:
        data = json.loads(path.read_text())
        steps, topology, wire_format = (
            data["worker_inner_steps"],
            str(data["topology"]),
            str(data["wire_format"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not a plan written by `tessera plan` ({exc}); run tessera plan again"
        ) from exc
    if not isinstance(steps, dict):
        raise ConfigError(f"{path}: worker_inner_steps must be an object; run tessera plan again")
    return topology, steps, wire_format


def print_plan(p: Plan) -> None:
    console.print(
        f"[bold]{p.topology}[/bold]: round {p.round_s:.2f} s, utilization {p.utilization:.0%}, "
        f"wire format {p.wire_format}, H = {p.inner_steps} on the fastest unit, "
        f"hub close {p.hub_close_s:.2f} s"
    )
    levels = Table("group", "kind", "strategy", "latency", "work", "units", title="levels")
    for lv in p.levels:
        levels.add_row(
            "  " * lv.depth + lv.group,
            lv.kind,
            lv.strategy,
            lv.latency_class,
            lv.work_class,
            ", ".join(lv.units),
        )
    console.print(levels)
    units = Table(
        "unit",
        "strategy",
        "nodes",
        "step ms",
        "H",
        "compute s",
        "sync s",
        "busy",
        "hours/day",
        title="units (hub workers)",
    )
    for u in p.units:
        units.add_row(
            u.name,
            u.strategy,
            str(len(u.nodes)),
            f"{u.step_s * 1000:.1f}",
            str(u.inner_steps),
            f"{u.compute_s:.1f}",
            f"{u.sync_s:.2f}",
            f"{u.utilization:.0%}",
            f"{u.available_h:.0f}",
        )
    console.print(units)
    busiest = sorted(p.links, key=lambda link: -link.load)[:MAX_LINK_ROWS]
    more = f", {len(p.links) - len(busiest)} more in the JSON" if len(p.links) > len(busiest) else ""
    links = Table("link", "Mbit/s", "GB/hour", "load", title=f"busiest links (by their lower end{more})")
    for link in busiest:
        links.add_row(link.link, f"{link.mbit:g}", f"{link.bytes_per_hour / 1e9:.2f}", f"{link.load:.1%}")
    console.print(links)
    nodes = Table("node", "device", "owner", "memory GB need/have", "hours/day", "idle h", title="nodes")
    for n in p.nodes:
        fit = f"{n.memory_need_gb:.1f}/{n.memory_gb:g}" + ("" if n.fits else " [red]does not fit[/red]")
        nodes.add_row(n.name, n.device, n.owner, fit, f"{n.available_h:.0f}", f"{n.idle_h:.1f}")
    console.print(nodes)
    modules = ", ".join(
        f"{m.module} ({m.parameters:,}: {m.work_class}, {m.latency_class})" for m in p.modules
    )
    console.print(f"model modules: {modules}")
    for warning in p.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


def print_run_bytes(b: RunBytes) -> None:
    console.print(
        f"over the run ({b.rounds} rounds, {b.steps:,} inner steps, {b.codecs}): "
        f"{b.total / 1e6:,.1f} MB per worker ({b.upload / 1e6:,.1f} up, {b.download / 1e6:,.1f} down), "
        f"1/{b.ratio:,.0f} of per-step data parallel's {b.data_parallel / 1e9:,.2f} GB"
    )


def churn_events(leave: list[str], join: list[str]) -> tuple[ChurnEvent, ...]:
    events = []
    for action, specs in (("leave", leave), ("join", join)):
        for spec in specs:
            unit, sep, at = spec.rpartition("@")
            try:
                events.append(ChurnEvent(float(at), unit, action))
            except ValueError as exc:
                raise ConfigError(
                    f"--{action} {spec!r} must look like UNIT@SECONDS, e.g. laptop@3600"
                ) from exc
            if not sep or not unit:
                raise ConfigError(f"--{action} {spec!r} must look like UNIT@SECONDS, e.g. laptop@3600")
    return tuple(events)


@app.command("simulate")
def simulate_command(
    topology: TopologyArg,
    recipe: RecipeOpt,
    rounds: Annotated[int, typer.Option(help="Rounds to simulate")] = 100,
    straggler: Annotated[float, typer.Option(help="Log-normal sigma of per-round slowdowns")] = 0.0,
    start: Annotated[str, typer.Option(help="Time of day (UTC) when the run starts")] = "00:00",
    windows: Annotated[bool, typer.Option(help="Honour availability windows")] = True,
    leave: Annotated[list[str] | None, typer.Option(help="UNIT@SECONDS: a unit leaves")] = None,
    join: Annotated[list[str] | None, typer.Option(help="UNIT@SECONDS: a unit (re)joins")] = None,
    seed: int = 0,
    target: TargetOpt = 0.9,
    efficiency: EfficiencyOpt = 0.3,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result as JSON")] = None,
) -> None:
    """Simulate ROUNDS rounds of the plan for TOPOLOGY: wall time with stragglers, windows, churn."""
    settings = PlanSettings(target_utilization=target, efficiency=efficiency)
    topo, run, planned, _ = build_plan(topology, recipe, settings, measure_flops=False)
    start_minute = parse_window(f"{start}-{start}").start
    sim = SimSettings(
        rounds=rounds,
        quorum=run.run.quorum,
        straggler_sigma=straggler,
        start_minute=start_minute,
        round_deadline_s=run.run.round_deadline_s,
        windows=windows,
        churn=churn_events(leave or [], join or []),
        seed=seed,
    )
    result = simulate(planned, topo, sim)
    print_simulation(planned, result)
    if json_path is not None:
        json_path.write_text(json.dumps({"plan_round_s": planned.round_s, **result.to_json()}, indent=2))


def print_simulation(p: Plan, r: SimResult) -> None:
    done = "" if r.complete else " [red](stopped: the simulated year ran out)[/red]"
    console.print(
        f"{r.rounds} rounds in {r.wall_s / 3600:.2f} h{done}: mean round {r.mean_round_s:.2f} s "
        f"(plan, steady state: {p.round_s:.2f} s); work lost to leaving units {r.lost_work_s:.0f} s"
    )
    table = Table("unit", "contributions")
    for name, count in r.contributions.items():
        table.add_row(name, str(count))
    console.print(table)


@app.command("probe")
def probe(
    hub_url: Annotated[str | None, typer.Option("--hub", help="Also measure the link to this hub")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="TESSERA_TOKEN", help="API token")] = None,
    name: Annotated[str, typer.Option(help="Node name for the entry")] = "",
    group: Annotated[str, typer.Option(help="Group the node belongs to")] = "home",
    owner: str = "",
    recipe: Annotated[Path | None, typer.Option("--recipe", help="Also time one step of this recipe")] = None,
) -> None:
    """Measure this machine and print its node entry for a topology file."""
    import platform

    from tessera.api.client import HubClient
    from tessera.worker.probe import device, device_kind, matmul_flops, measure_link, measure_step, memory_gb

    configure_torch(None)
    dev = device()
    flops = matmul_flops(dev)
    link = "{ latency_ms = 0.1, bandwidth_mbit = 1000 }  # not measured: pass --hub"
    if hub_url is not None:
        with HubClient.connect(hub_url, token, retry_s=10.0) as client:
            m = measure_link(client)
        bandwidth = min(m.download_mbit, m.upload_mbit)
        link = (
            f"{{ latency_ms = {m.latency_ms:.3f}, bandwidth_mbit = {bandwidth:.1f} }}"
            f"  # measured to {hub_url}: down {m.download_mbit:.1f}, up {m.upload_mbit:.1f} Mbit/s"
        )
    lines = [
        "[[node]]",
        f'name = "{name or platform.node() or "node"}"',
        f'group = "{group}"',
        f'device = "{device_kind(dev)}"',
        f"flops = {flops:.3e}  # float32 matmul, measured",
        f"memory_gb = {memory_gb(dev):.1f}",
        f"link = {link}",
        f'owner = "{owner}"',
    ]
    if recipe is not None:
        step = measure_step(load_recipe(recipe), flops)
        lines.append(
            f"# {recipe}: one step takes {step.step_s * 1000:.1f} ms = {step.efficiency:.1%} of the matmul "
            f"FLOP/s: pass --efficiency {step.efficiency:.3f} to tessera plan"
        )
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
