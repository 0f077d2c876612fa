"""The scale benchmark's probe inside a measured ``brokenbind fit`` run (its own module so that the benchmark's other
measured processes do not import Lightning, which takes seconds)."""

import itertools
import json
import threading
import time
from pathlib import Path

from lightning.pytorch import Callback, Trainer

from benchmarks.memory import status_mb


class Probe(Callback):
    """Added to a ``brokenbind fit`` run (``--trainer.callbacks+=benchmarks.probe.Probe``): writes ``out``/rank<R>.json
    when fit ends, with the seconds from the end of each training batch to the end of the next (loading the batch
    and its step) after ``warmup`` batches, this process's VmHWM then, and its peak RssAnon and RssFile sampled every
    20 ms from the moment the trainer is built (before the data are read and the feature statistics computed)."""

    def __init__(self, out: str, warmup: int = 30):
        self.out, self.warmup = Path(out), warmup
        self.ends: list[float] = []
        self.peak = {"RssAnon": 0.0, "RssFile": 0.0}
        self.stop = threading.Event()
        self.sampler = threading.Thread(target=self.sample, daemon=True)
        self.sampler.start()

    def sample(self) -> None:
        while not self.stop.is_set():
            now = status_mb()
            for key in self.peak:
                self.peak[key] = max(self.peak[key], now.get(key, 0.0))
            self.stop.wait(0.02)

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.ends.append(time.perf_counter())

    def teardown(self, trainer: Trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self.stop.set()
        self.sampler.join()
        final = status_mb()
        timed = self.ends[max(self.warmup - 1, 0) :]
        record = {
            "rank": trainer.global_rank,
            "step_seconds": [b - a for a, b in itertools.pairwise(timed)],
            "vmhwm_mb": final["VmHWM"],
            "anon_mb": max(self.peak["RssAnon"], final["RssAnon"]),
            "file_mb": max(self.peak["RssFile"], final["RssFile"]),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
