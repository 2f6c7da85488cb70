"""Hardware probe: measure this machine as a topology node entry.

Matrix-multiply FLOP/s (the best of several timed float32 products), memory, device kind and,
given a hub, latency and bandwidth to it; given a recipe, the time of one real training step
and the share of the matmul FLOP/s it reaches (the planner's ``efficiency``).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from tessera.api.client import HubClient
from tessera.core.inner import InnerTrainer
from tessera.recipe import Recipe
from tessera.task import build_model, load_data, training_flops_per_token

PROBE_BYTES = 4 << 20


@dataclass(frozen=True)
class LinkMeasurement:
    latency_ms: float  # one way: half the median round trip of an empty request
    download_mbit: float
    upload_mbit: float


@dataclass(frozen=True)
class StepMeasurement:
    step_s: float
    flops_per_step: float
    efficiency: float  # achieved FLOP/s over matmul FLOP/s


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_kind(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"cpu ({line.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def memory_gb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev).total_memory / 1e9
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_flops(dev: torch.device, size: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of ``size``-square float32 products (2 n^3 FLOPs each)."""
    a = torch.randn(size, size, device=dev)
    b = torch.randn(size, size, device=dev)
    inner = 20 if dev.type == "cuda" else 2
    best = float("inf")
    a @ b  # warm-up
    for _ in range(repeats):
        synchronize(dev)
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        synchronize(dev)
        best = min(best, (time.perf_counter() - start) / inner)
    return 2 * size**3 / best


def measure_link(client: HubClient, nbytes: int = PROBE_BYTES, pings: int = 5) -> LinkMeasurement:
    """Latency from empty requests; bandwidth from one download and one upload of ``nbytes``."""
    trips = []
    for _ in range(pings):
        start = time.perf_counter()
        client.probe_download(0)
        trips.append(time.perf_counter() - start)
    rtt = statistics.median(trips)
    start = time.perf_counter()
    client.probe_download(nbytes)
    down = max(time.perf_counter() - start - rtt, 1e-6)
    start = time.perf_counter()
    client.probe_upload(nbytes)
    up = max(time.perf_counter() - start - rtt, 1e-6)
    return LinkMeasurement(rtt / 2 * 1000, nbytes * 8 / down / 1e6, nbytes * 8 / up / 1e6)


def measure_step(recipe: Recipe, flops: float, steps: int = 5) -> StepMeasurement:
    """The median time of one inner step of the recipe's model on this machine (after a warm-up)."""
    model = build_model(recipe)
    trainer = InnerTrainer(model, recipe.train)
    batches = load_data(recipe).train_batches(None, recipe.train.batch_size, recipe.seed)
    trainer.step(next(batches))
    times = []
    tokens = 0
    for _ in range(steps):
        batch = next(batches)
        start = time.perf_counter()
        _, tokens = trainer.step(batch)
        times.append(time.perf_counter() - start)
    step = statistics.median(times)
    per_step = tokens * training_flops_per_token(model)
    return StepMeasurement(step, per_step, per_step / step / flops)
