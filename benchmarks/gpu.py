"""Item 6, on a CUDA device only: the surrogate's TFLOP/s and the preemption check's host sync.

- ResNet-18 at 224 px, frozen, batch 256: forward and backward to the input (what the
  generator stage asks of the surrogate), bf16 autocast, channels_last, ``torch.compile``;
  FLOPs counted by ``torch.utils.flop_counter`` on the uncompiled model, against the device's
  dense bf16 peak where it is known.
- The generator stage's step on a one-rank nccl group with and without a per-step preemption
  check as a multi-rank job makes it (an all-reduce of the flag and its ``.item()``, a host
  sync); the product skips it on one rank, so it is forced here.

Without CUDA every row reads "not measured".
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import workload
from benchmarks.rows import Row
from benchmarks.timing import Timing
from ue_sweep.config import ModelSpec, TrainerConfig
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.runtime.distributed import runtime
from ue_sweep.runtime.env import DistEnv
from ue_sweep.uc.train_generators import UCObjective, uc_loss_grad

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets.
BF16_PEAK = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
BATCH = 256


def _peak(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def _cuda_seconds(fn: Callable[[], object], steps: int) -> float:
    for _ in range(3):  # warm-up (and compilation)
        fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def _surrogate_tflops(device: torch.device) -> tuple[Row, dict]:
    model = (
        build_classifier(
            ModelSpec(arch="resnet18"), in_channels=3, num_classes=1000, image_size=224
        )
        .to(device)
        .eval()
        .requires_grad_(False)
    )
    model = model.to(memory_format=torch.channels_last)
    images = torch.rand(BATCH, 3, 224, 224, device=device).to(memory_format=torch.channels_last)

    def step(net: torch.nn.Module) -> None:
        x = images.detach().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, features = net(x)
        features.float().logsumexp(-1).sum().backward()

    with FlopCounterMode(display=False) as counter:
        step(model)
    flops = counter.get_total_flops()
    compiled = torch.compile(model)
    seconds = _cuda_seconds(lambda: step(compiled), 20)
    tflops = flops / seconds / 1e12
    peak = _peak(torch.cuda.get_device_name(device))
    share = f", {100 * tflops / peak:.0f}% of {peak:g} peak" if peak else ", peak unknown"
    row = Row(
        "6 gpu",
        f"ResNet-18 224px batch {BATCH} fwd+bwd, bf16, channels_last, compiled",
        "",
        "",
        None,
        None,
        ">= 40% of bf16 peak",
        value=f"{tflops:.0f} TFLOP/s{share}",
    )
    return row, {"flops_per_step": flops, "step_s": seconds, "tflops": tflops, "peak": peak}


def _preemption_sync(device: torch.device) -> tuple[Row, dict]:
    trainer = TrainerConfig(accelerator="cuda", backend="nccl", precision="bf16")
    with runtime(DistEnv(), trainer) as rt:
        k, images = 10, workload.digits_images().to(device)
        sur = workload.surrogate().to(device)
        clusters = workload.clusters(len(images), k, sur.feature_dim)
        bank = workload.bank(k).to(device)
        optimizer = torch.optim.Adam(bank.parameters(), lr=1e-3)
        x = images[: workload.BATCH].float() / 255
        ids = clusters.ids[: workload.BATCH].to(device)
        targets = clusters.centers[clusters.targets].softmax(-1).to(device)
        flag = torch.zeros(1, dtype=torch.int32, device=device)

        def step(check: bool) -> None:
            noise = bank()
            _, _, grad = uc_loss_grad(sur, x, ids, noise, UCObjective(targets, "all", 4096), rt)
            optimizer.zero_grad(set_to_none=True)
            noise.backward(grad)
            optimizer.step()
            if check:
                dist.all_reduce(flag)
                flag.item()

        plain = _cuda_seconds(lambda: step(False), 50)
        checked = _cuda_seconds(lambda: step(True), 50)
    cost = checked / plain - 1
    row = Row(
        "6 gpu",
        "generator step (k=10, scope all): per-step preemption .item()",
        "without",
        "with",
        Timing(checked, 0.0),
        Timing(plain, 0.0),
        "costs <= 2%",
        value=f"+{100 * cost:.1f}% per step",
    )
    return row, {"step_s": plain, "checked_step_s": checked, "cost": cost}


def run() -> tuple[list[Row], dict]:
    if not torch.cuda.is_available():
        rows = [
            Row("6 gpu", case, "", "", None, None, goal, value="not measured (no CUDA)")
            for case, goal in (
                ("ResNet-18 224px surrogate TFLOP/s", ">= 40% of bf16 peak"),
                ("per-step preemption .item()", "costs <= 2%"),
            )
        ]
        return rows, {"measured": False}
    device = torch.device("cuda", 0)
    tflops, raw_tflops = _surrogate_tflops(device)
    sync, raw_sync = _preemption_sync(device)
    raw = {"measured": True, "device": torch.cuda.get_device_name(device)}
    return [tflops, sync], raw | {"surrogate": raw_tflops, "preemption": raw_sync}
