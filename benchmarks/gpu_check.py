"""``make gpu-check``: the GPU paths, on a machine with one CUDA GPU, in a few minutes from a fresh clone.

Each check trains (or encodes) on the GPU and on the CPU with the same seed and compares: losses finite (a NaN stops a
run with DivergenceError), test mAP within ``TOLERANCE`` of the CPU fp32 run, and the step time and peak GPU memory
printed. Checks: ``two_dataset`` in bf16-mixed; ``digits_real`` with its frozen encoders on the GPU (the feature cache
filled from the device); a one-GPU DDP run; ``brokenbind embed`` on the GPU against the CPU's arrays. Never run on a
GPU by the authors (their machines have none): a failure here is a bug to report.
"""

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer

from brokenbind.api import fit, quiet_lightning
from brokenbind.embed import embed

TOLERANCE = 0.01  # test mAP, GPU against CPU fp32 (bf16 autocast and GPU kernels round differently)
EPOCHS = {"two_dataset": 10, "digits_real": 5}
GPU, CPU = ["--hardware=gpu"], ["--hardware=cpu"]
DDP = ["--hardware=ddp", "--trainer.devices=1"]


class StepTimer(Callback):
    """Median time of a training batch (forward, backward, optimiser step), the device synchronised around it."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        sync()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        sync()
        self.times.append(time.perf_counter() - self.start)


def scored_run(config: str, hardware: list[str], logs: Path) -> tuple[np.ndarray, float]:
    """(test instance and class mAP of every flow, median seconds per training step) of one seeded run; peak GPU
    memory is reset before it."""
    reset_peak()
    timer = StepTimer()
    result = fit(
        f"experiments/{config}.yaml",
        [*hardware, f"--trainer.max_epochs={EPOCHS[config]}", "--seed_everything=0",
         f"--trainer.logger.init_args.save_dir={logs}", "--trainer.enable_progress_bar=false"],
        callbacks=[timer],
    )  # fmt: skip
    seconds = float(np.median(timer.times))
    return np.array([(row.map_instance, row.map_class) for row in result.stage("test")]), seconds


def has_gpu() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    torch.cuda.reset_peak_memory_stats()


def peak_gpu_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, default=Path(tempfile.mkdtemp(prefix="gpu-check-")))
    args = parser.parse_args()
    if not has_gpu():
        raise SystemExit("gpu-check: torch sees no CUDA GPU on this machine")
    quiet_lightning()
    failures = []
    for name, config, hardware in [
        ("two_dataset bf16-mixed", "two_dataset", GPU),
        ("digits_real, encoders and cache on the GPU", "digits_real", GPU),
        ("two_dataset, DDP on one GPU", "two_dataset", DDP),
    ]:
        gpu, step = scored_run(config, hardware, args.logs / "gpu")
        memory = peak_gpu_mb()
        cpu, _ = scored_run(config, CPU, args.logs / "cpu")
        ok = bool(np.abs(gpu - cpu).max() <= TOLERANCE)
        failures += [] if ok else [name]
        print(f"{name}: test mAP instance/class {gpu.round(4).tolist()} (CPU fp32 {cpu.round(4).tolist()}) "
              f"{'ok' if ok else 'DIFFERS'}; "
              f"{step * 1e3:.1f} ms/step, peak GPU memory {memory:.0f} MB")  # fmt: skip
    reset_peak()
    start = time.perf_counter()
    on_gpu = embed("experiments/digits_real.yaml", args.logs / "embed-gpu", overrides=GPU)
    seconds, memory = time.perf_counter() - start, peak_gpu_mb()
    on_cpu = embed("experiments/digits_real.yaml", args.logs / "embed-cpu", overrides=CPU)
    for dataset, arrays in on_gpu.arrays.items():
        for modality, (path, _) in arrays.items():
            a, b = np.load(path), np.load(on_cpu.arrays[dataset][modality][0])
            cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            ok = bool(np.isfinite(a).all() and cosine.min() > 0.99)
            failures += [] if ok else [f"embed {dataset}/{modality}"]
            print(f"embed {dataset}/{modality}: min cosine to the CPU's features {cosine.min():.5f} "
                  f"{'ok' if ok else 'DIFFERS'}")  # fmt: skip
    print(f"embed on the GPU: {seconds:.1f} s, peak GPU memory {memory:.0f} MB")
    if failures:
        raise SystemExit(f"gpu-check failed: {', '.join(failures)}")
    print("gpu-check passed")


if __name__ == "__main__":
    main()
