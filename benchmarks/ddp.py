"""Item 4: 1 vs 2 gloo ranks on the same global batch, and the share spent in collectives.

Each rank runs the product's generator stage (the demo's settings: scope cluster, noise before
augmentation, k=10) with one torch thread, so 2 ranks use the 2 cores that 1 rank leaves
idle. A second, instrumented run clocks every collective on rank 0: the gradient all-reduce
(a DDP comm hook that runs it synchronously), the per-step cluster counts and the per-step
preemption flag. Its share is collective seconds over that run's seconds.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from benchmarks import workload
from benchmarks.rows import Row
from benchmarks.timing import Timing
from ue_sweep.config import BatchSizeConfig, TrainerConfig
from ue_sweep.runtime import preemption
from ue_sweep.runtime.distributed import Runtime, runtime, spawn
from ue_sweep.runtime.env import DistEnv
from ue_sweep.runtime.progress import Progress
from ue_sweep.train.run import TrainingRun
from ue_sweep.uc.train_generators import ClusteredImages, train_generators

K = 10
GLOBAL_BATCH = 128


class _Clock:
    seconds = 0.0

    @classmethod
    def wrap(cls, fn: Callable[..., Any]) -> Callable[..., Any]:
        def clocked(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                cls.seconds += time.perf_counter() - started

        return clocked


def _sync_allreduce(state, bucket):  # type: ignore[no-untyped-def]
    """DDP's mean all-reduce, run synchronously so its seconds can be clocked.

    Unannotated: DDP rejects a hook whose annotations are not the objects themselves, and
    ``from __future__ import annotations`` makes them strings.
    """
    started = time.perf_counter()
    buffer = bucket.buffer()
    dist.all_reduce(buffer)
    buffer.div_(dist.get_world_size())
    _Clock.seconds += time.perf_counter() - started
    future = torch.futures.Future()
    future.set_result(buffer)
    return future


def _instrument() -> None:
    """Clock every collective of the generator stage (this process only)."""
    wrap = Runtime.wrap

    def hooked(self: Runtime, module: torch.nn.Module) -> Any:
        ddp = wrap(self, module)
        ddp.register_comm_hook(None, _sync_allreduce)
        return ddp

    Runtime.wrap = hooked  # type: ignore[method-assign]
    Runtime.all_reduce_sum = _Clock.wrap(Runtime.all_reduce_sum)  # type: ignore[method-assign]
    preemption.requested = _Clock.wrap(preemption.requested)


def _stage(rt: Runtime, images: torch.Tensor, epochs: int) -> float:
    cfg = replace(workload.generator_config("cluster", epochs), noise_order="before_augment")
    sur = workload.surrogate()
    clusters = workload.clusters(len(images), K, sur.feature_dim)
    dist.barrier()
    started = time.perf_counter()
    train_generators(
        workload.bank(K, cfg),
        sur,
        ClusteredImages(images, torch.zeros(len(images), dtype=torch.long), clusters),
        cfg,
        BatchSizeConfig(per_device=GLOBAL_BATCH // rt.world_size),
        workload.AUGMENT,
        TrainingRun(rt, seed=0, progress=Progress("none"), name="generators"),
    )
    return (time.perf_counter() - started) / epochs


def _rank(env: DistEnv, out: str, epochs: int) -> None:
    with runtime(env, TrainerConfig(accelerator="cpu", threads=1, timeout_s=300)) as rt:
        images = workload.digits_images()
        cpu = time.process_time()
        plain = _stage(rt, images, epochs)
        cpu = (time.process_time() - cpu) / epochs
        _instrument()
        instrumented = _stage(rt, images, epochs)
        if rt.is_main:
            record = {
                "epoch_s": plain,
                "epoch_cpu_s": cpu,
                "instrumented_epoch_s": instrumented,
                "collective_s_per_epoch": _Clock.seconds / epochs,
            }
            Path(out).write_text(json.dumps(record))


def run(epochs: int) -> tuple[list[Row], dict]:
    raw = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            out = str(Path(tmp) / f"{world}.json")
            spawn(_rank, world, (out, epochs))
            raw[world] = json.loads(Path(out).read_text())
    one, two = (Timing(raw[w]["epoch_s"], raw[w]["epoch_cpu_s"]) for w in (1, 2))
    case = f"global batch {GLOBAL_BATCH}, k={K}, scope cluster, 1 thread per rank"
    rows = [Row("4 ddp", case, "1 rank", "2 ranks", one, Timing(two.wall, 0.0), "~2x")]
    for world in (1, 2):
        share = raw[world]["collective_s_per_epoch"] / raw[world]["instrumented_epoch_s"]
        raw[world]["collective_share"] = share
        rows.append(
            Row(
                "4 ddp",
                f"{world} rank(s): share of epoch in collectives",
                "",
                "",
                None,
                None,
                "small",
                value=f"{100 * share:.1f}%",
            )
        )
    return rows, {str(w): r for w, r in raw.items()}
