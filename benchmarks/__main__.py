"""``python -m benchmarks [--quick] [--only 1,2,...]``: run the items, print the ratio table and
write the raw figures to ``benchmarks/results/``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from benchmarks import cli_latency, ddp, generators, gpu, input_pipeline, scale, sweep
from benchmarks.rows import Row, table
from benchmarks.timing import load_average, machine
from ue_sweep.config import TrainerConfig
from ue_sweep.runtime.distributed import runtime
from ue_sweep.runtime.env import DistEnv

RESULTS = Path(__file__).resolve().parent / "results"
# One torch thread per process: steadier under contention, and item 4's 2 ranks then use the
# 2 cores that 1 rank leaves idle.
THREADS = 1
FULL = {
    "fused_n": 320,
    "fused_k": (2, 10, 50),
    "input_size": 32,
    "input_epochs": 2,
    "growth_fractions": (0.25, 0.5, 1.0),
    "growth_k": (2, 10, 50),
    "ddp_epochs": 2,
    "reps": 2,
    "scale_sizes": (10_000, 40_000, 160_000),
}
QUICK = FULL | {
    "fused_n": 128,
    "fused_k": (2, 10),
    "input_size": 16,
    "input_epochs": 1,
    "growth_fractions": (0.25, 0.5),
    "growth_k": (2, 10),
    "ddp_epochs": 1,
    "reps": 1,
    "scale_sizes": (1_000, 2_000, 4_000),
}


def _items(s: dict) -> dict[str, Callable[[], tuple[list[Row], dict]]]:
    def on_one_rank(fn: Callable[..., tuple[list[Row], dict]], *args: object):
        with runtime(DistEnv(), TrainerConfig(accelerator="cpu", threads=THREADS)) as rt:
            return fn(rt, *args)

    return {
        "1": lambda: on_one_rank(
            generators.fused_vs_reference, s["fused_n"], s["fused_k"], s["reps"]
        ),
        "2": lambda: input_pipeline.run(s["input_size"], s["input_epochs"], s["reps"]),
        "3": lambda: on_one_rank(
            generators.growth, s["growth_fractions"], s["growth_k"], s["reps"]
        ),
        "4": lambda: ddp.run(s["ddp_epochs"]),
        "5": sweep.run,
        "6": gpu.run,
        "7": cli_latency.run,
        "8": lambda: on_one_rank(scale.run, s["scale_sizes"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8", help="items to run, e.g. 1,3")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    torch.set_num_threads(THREADS)
    started, loads = time.perf_counter(), {"start": load_average()}
    rows: list[Row] = []
    raw: dict[str, object] = {}
    items = _items(settings)
    for item in args.only.split(","):
        item_started = time.perf_counter()
        item_rows, raw[item] = items[item]()
        rows += item_rows
        loads[f"after item {item}"] = load_average()
        print(f"item {item} done in {time.perf_counter() - item_started:.0f} s", flush=True)
    seconds = time.perf_counter() - started
    info = machine()
    print()
    print(table(rows))
    print(
        f"\n{info['cpu']}, {info['affinity']} cores, torch {info['versions']['torch']}, "
        f"{THREADS} thread(s) per process; {seconds:.0f} s; load average (1 min) "
        + ", ".join(f"{k} {v[0]:.1f}" for k, v in loads.items())
    )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    record = {
        "machine": info,
        "threads": THREADS,
        "settings": settings,
        "seconds": seconds,
        "load_average": loads,
        "rows": [r.as_dict() for r in rows],
        "raw": raw,
    }
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"raw figures: {out}")


if __name__ == "__main__":
    main()
