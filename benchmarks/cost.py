"""Cost benchmarks (the cost part of ``make bench``): what BrokenBind costs beside fine-tuning, and evaluation.

This 2-core CPU is noisy (timings swing 2× when anything else runs), so every comparison is made inside one process,
methods interleaved round by round, and reported as ratios with their range over rounds; absolute times are context.

1. ``step``: training-step time of each method preset at 8, 64 and 256 rows per dataset on the two_dataset
   experiment, each model and datamodule built by a run (``brokenbind.api.fit``) and timed between the Trainer's batch
   hooks: the LightningModule's ``training_step`` (loss terms, finite check, logging), backward and the configured
   optimiser's step (AdamW, weight decay 0.2). (a) on mfeat's feature vectors (the ``standardize`` backbone) and
   (b) with a frozen timm backbone in the step (EfficientNet-Lite0, random weights: the cost is the same, on mfeat's
   pix view as a 64×64 image). MOX is on from the first epoch.
   ``overhead``: the same models' training batches in a Lightning fit (its whole loop: data, hooks, logging, the
   step) against a bare PyTorch loop of the same math (features, heads, the method's terms, backward, AdamW).
2. ``profile``: torch.profiler over BrokenBind training batches at batch 64: the share of the batch in the
   pseudo-inverses, in each loss term's forward pass, in backward and in the optimiser's update.
3. ``retrieval``: exact instance mAP + R@1/5/10 (and class mAP) on a 10,000 × 10,000 query × gallery (d = 128), ours
   vs torchmetrics' RetrievalMAP (fed the same scores shifted into (0, 1], its documented domain) vs a scikit-learn
   per-query loop (timed on 500 queries, extrapolated). Each runs in its own process, so its peak memory is its own;
   values are checked against scikit-learn on the same 500 queries.
4. ``cache``: the first and second training epoch with frozen EfficientNet-Lite0 + MiniLM on the built-in digits,
   with and without the feature cache (needs espeak-ng).
5. ``large``: a two-dataset manifest experiment whose features are one ``.npy`` array per dataset and
   modality, against the same features as one ``.npy`` file per row: setup + statistics + one epoch, time and peak
   memory, each in its own process.
6. ``validation``: one validation epoch (embedding both evaluation datasets and scoring every flow) against one
   training epoch.
7. ``run``: wall time and peak memory of ``brokenbind fit --config experiments/two_dataset.yaml`` (50 epochs + test),
   run from the working directory's ``experiments/``.
8. ``imports``: seconds to import torch, Lightning, the library and the application, each in a fresh interpreter.
9. ``map``: the default's kernel map on synthetic features: choosing its (λ, width), fitting it, completing a batch.

``--quick`` (``make bench-quick``) uses fewer rounds and a 2,000 × 2,000 retrieval. The Markdown report goes to
``--out`` (default ``benchmarks/results/cost.md``) with the command and versions that produced it.
"""

import argparse
import contextlib
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.memory import measured
from brokenbind import api
from brokenbind.backbones import ModalityInfo
from brokenbind.backbones.image import TimmImage
from brokenbind.callbacks import EmergentBinding
from brokenbind.methods import BrokenBind, FABind
from brokenbind.metrics.retrieval import retrieval_metrics
from brokenbind.module import BindingModule, silence_known_warnings
from datamodules import DigitsDataModule, MfeatDataModule

EXPERIMENT = Path("experiments/two_dataset.yaml")  # of the checkout the cost report runs in
METHODS = ("brokenbind", "brokenbind_paper", "centrobind", "fabind")  # presets (configs/methods)
TWO_DATASETS = {"support": {"modalities": ["pix", "zer"]}, "evaluation": {"modalities": ["fou", "pix"]}}


# -- 1. training steps ---------------------------------------------------------------------------------------------
class PixImage(nn.Module):
    """mfeat's pix view (a 16 × 15 image of pixel counts 0-6, flattened) as a one-channel image for a timm model with
    random weights: the cost of an image encoder in the step, on the experiment's own data (an ``import`` backbone)."""

    def __init__(self, model: str = "tf_efficientnet_lite0", image_size: int = 64):
        super().__init__()
        self.encoder = TimmImage(ModalityInfo(kind="image", shape=(1, 16, 15)), model, image_size=image_size)
        self.out_dim = self.encoder.out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x.view(-1, 1, 16, 15) / 6)


def build(
    method: str, batch_size: int, backbones: dict | None, root: Path
) -> tuple[BindingModule, LightningDataModule]:
    """The model (method preset, configured optimiser) and datamodule of the two_dataset experiment, built by a run
    (``brokenbind.api.fit``, one ``fast_dev_run`` step) with MOX on from the first epoch."""
    overrides = [
        f"--method={method}",
        f"--data.init_args.batch_size={batch_size}",
        "--trainer.fast_dev_run=true",
        "--test_after_fit=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={root}",
        *(["--model.method.init_args.consistency_epochs=0"] if method.startswith("brokenbind") else []),
        *([f"--model.backbones={json.dumps(backbones)}"] if backbones else []),
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # the results table of a one-batch run: nothing to report
        result = api.fit(EXPERIMENT, overrides)
    return result.model, result.datamodule


class StepTimer(Callback):
    """Milliseconds of each training batch as the Trainer runs it: the LightningModule's ``training_step``
    (embeddings, loss terms, finite check, logging), backward and the configured optimiser's step. With a ``label``,
    each batch is also a ``record_function`` range of that name, for torch.profiler."""

    def __init__(self, label: str | None = None):
        self.label, self.ms = label, []

    def on_train_batch_start(self, trainer: Trainer, pl_module: BindingModule, batch: dict, batch_idx: int) -> None:
        self.range = record_function(self.label).__enter__() if self.label else None
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: BindingModule, outputs, batch, batch_idx: int) -> None:
        self.ms.append(1000 * (time.perf_counter() - self.start))
        if self.range is not None:
            self.range.__exit__(None, None, None)


def train_steps(
    model: BindingModule, datamodule: LightningDataModule, steps: int, label: str | None = None
) -> list[float]:
    """Milliseconds of each of ``steps`` training batches of ``model`` (``StepTimer``), continuing its training in a
    new Trainer, after one batch that is not counted: each fit builds a new optimiser, whose first step makes its
    state."""
    timer = StepTimer(label)
    trainer = Trainer(
        max_epochs=-1, max_steps=steps + 1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return timer.ms[1:]


def interleaved_ms(
    runs: dict[str, tuple[BindingModule, LightningDataModule]], rounds: int, repeats: int
) -> dict[str, list[float]]:
    """Per round, the median milliseconds of ``repeats`` training steps of each model, the models taking turns."""
    for model, datamodule in runs.values():  # warm-up: allocator, thread pools, optimiser state, lazy inits
        train_steps(model, datamodule, 3)
    out: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, datamodule) in runs.items():
            out[name].append(statistics.median(train_steps(model, datamodule, repeats)))
    return out


def bench_steps(batch_sizes: list[int], rounds: int, repeats: int, root: Path) -> list[str]:
    lines = [
        "| inputs | batch / dataset | " + " | ".join(f"{m} ms" for m in METHODS) + " | brokenbind / fabind (range) |",
        "|---|---|" + "---|" * len(METHODS) + "---|",
    ]
    timm = {"pix": {"name": "import", "class_path": "benchmarks.cost.PixImage", "init_args": {"image_size": 64}}}
    for inputs, backbones in (("feature vectors", None), ("frozen timm in the step", timm)):
        for batch_size in batch_sizes:
            runs = {name: build(name, batch_size, backbones, root) for name in METHODS}
            ms = interleaved_ms(runs, rounds, repeats if backbones is None else max(1, repeats // 5))
            ratios = [b / f for b, f in zip(ms["brokenbind"], ms["fabind"], strict=True)]
            cells = " | ".join(f"{statistics.median(ms[m]):.1f}" for m in METHODS)
            ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            lines.append(f"| {inputs} | {batch_size} | {cells} | {ratio} |")
            print(lines[-1], flush=True)
    return lines


# -- 1b. a fit against a bare PyTorch loop --------------------------------------------------------------------------
class SpanTimer(Callback):
    """Seconds from the start of the second training batch to the end of the last: Lightning's whole loop (data,
    hooks, logging, the step), without its setup and the optimiser's first step."""

    start: float | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: BindingModule, batch: dict, batch_idx: int) -> None:
        if trainer.global_step == 1:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: BindingModule, outputs, batch, batch_idx: int) -> None:
        if self.start is not None:
            self.seconds = time.perf_counter() - self.start


def lightning_steps(module: BindingModule, datamodule: LightningDataModule, steps: int) -> float:
    """Milliseconds per training batch of a Lightning fit of ``steps`` + 1 batches (the first not counted)."""
    timer = SpanTimer()
    trainer = Trainer(
        max_epochs=-1, max_steps=steps + 1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    return 1000 * timer.seconds / steps


def bare_steps(module: BindingModule, datamodule: LightningDataModule, steps: int) -> float:
    """The same math in a bare PyTorch loop: the datamodule's training batches, features → the method's completion →
    heads → the method's loss terms, backward, the configured optimiser; no logging, no finite check, no hooks."""
    model, method = module.model, module.method
    optimizer = module.configure_optimizers()
    batches = (batch for _ in iter(int, 1) for batch in datamodule.train_dataloader())  # epoch after epoch
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        batch, _, _ = next(batches)
        features = {ds: {m: model.features(m, x, b["index"]) for m, x in b["x"].items()} for ds, b in batch.items()}
        features = method.complete(features)
        embeddings = {ds: {m: model.project(m, f) for m, f in fs.items()} for ds, fs in features.items()}
        loss = sum(method(embeddings, epoch=1, max_epochs=50).terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return 1000 * (time.perf_counter() - start) / steps


def bench_overhead(batch_size: int, steps: int, rounds: int, root: Path) -> list[str]:
    """Lightning's cost over a bare loop of the same math, per method at one batch size, the two taking turns."""
    lines = ["| method | fit ms / batch | bare loop ms / batch | fit / bare (range) |", "|---|---|---|---|"]
    for method in ("fabind", "brokenbind"):
        module, datamodule = build(method, batch_size, None, root)
        fit_ms, bare_ms = [], []
        for _ in range(rounds):
            fit_ms.append(lightning_steps(module, datamodule, steps))
            bare_ms.append(bare_steps(module, datamodule, steps))
        ratios = [f / b for f, b in zip(fit_ms, bare_ms, strict=True)]
        lines.append(
            f"| {method} | {statistics.median(fit_ms):.1f} | {statistics.median(bare_ms):.1f} | "
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
        print(lines[-1], flush=True)
    return lines


# -- 2. profile ----------------------------------------------------------------------------------------------------
# Python functions whose time (inclusive) the profile reports, by torch.profiler's "file(line): name" of the call
PROFILED = {
    "pseudo-inverses (forward)": r"brokenbind/losses/mox\.py\(\d+\): pivot_pinv$",
    "L_CLIP + push-away (forward)": r"brokenbind/methods/brokenbind\.py\(\d+\): clip$",
    "L_Sym / CyCLIP (forward)": r"brokenbind/methods/brokenbind\.py\(\d+\): symmetry$",
    "L_MOX + R_Fro incl. pseudo-inverses (forward)": r"brokenbind/methods/brokenbind\.py\(\d+\): extrapolation$",
    "backward (all terms)": r"^autograd::engine::evaluate_function: ",
    "optimiser update (the configured AdamW)": r"torch/optim/adam\.py\(\d+\): adam$",  # AdamW steps through it
}


def bench_profile(batch_size: int, steps: int, root: Path) -> list[str]:
    """torch.profiler over real training batches, each a ``step`` range (``StepTimer``); Python calls are recorded
    (``with_stack``), so the pieces are found by function name and the library carries no profiling code."""
    model, datamodule = build("brokenbind", batch_size, None, root)
    train_steps(model, datamodule, 3)  # warm-up
    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        train_steps(model, datamodule, steps, label="step")
    events = prof.events()
    batches = sorted((e.time_range for e in events if e.name == "step"), key=lambda r: r.start)
    batches = batches[1:]  # the first batch is not counted (``train_steps``)
    if len(batches) != steps:
        raise RuntimeError(f"the profile holds {len(batches)} training batches, expected {steps}")

    def inside(event) -> bool:
        return any(b.start <= event.time_range.start and event.time_range.end <= b.end for b in batches)

    shares = {}
    for name, pattern in PROFILED.items():
        matched = [e for e in events if re.search(pattern, e.name) and inside(e)]
        if not matched:  # a renamed function would otherwise show as 0 %
            raise RuntimeError(f"the profile has no call matching {pattern!r} ({name}) inside a training batch")
        shares[name] = sum(e.cpu_time_total for e in matched) / sum(b.elapsed_us() for b in batches)
    lines = [f"| part of a BrokenBind training batch, batch {batch_size} | share of the batch |", "|---|---|"]
    lines += [f"| {name} | {100 * share:.1f} % |" for name, share in shares.items()]
    print("\n".join(lines), flush=True)
    return lines


# -- 3. retrieval --------------------------------------------------------------------------------------------------
def retrieval_inputs(n: int, d: int = 128) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(n, d, generator=g), dim=1)
    gallery = F.normalize(query + 0.8 * torch.randn(n, d, generator=g), dim=1)
    labels = torch.randint(0, 10, (n,), generator=g)
    return query, gallery, torch.arange(n), labels


def measure_retrieval(impl: str, n: int, sample: int) -> dict[str, float]:
    """Run in a fresh process: seconds, peak memory above the inputs, and the values."""
    query, gallery, ids, labels = retrieval_inputs(n)

    def run() -> dict:
        if impl == "matmul":
            (query @ gallery.T).max()
            return {}
        if impl == "ours":
            return retrieval_metrics(query, gallery, ids, ids)
        if impl == "ours+class":
            return retrieval_metrics(query, gallery, ids, ids, labels, labels)
        if impl == "torchmetrics":
            from torchmetrics.retrieval import RetrievalMAP

            scores = (query @ gallery.T + 1) / 2 + 1e-6  # into (0, 1]: its documented input range
            target = torch.eye(n, dtype=torch.bool)
            indexes = torch.arange(n)[:, None].expand(n, n)
            return {"mAP": RetrievalMAP()(scores.flatten(), target.flatten(), indexes=indexes.flatten()).item()}
        if impl == "sklearn":
            from sklearn.metrics import average_precision_score

            scores = (query[:sample] @ gallery.T).numpy()
            aps = [average_precision_score(ids.numpy() == q, scores[q]) for q in range(sample)]
            return {"mAP": float(sum(aps) / sample), "sample": sample}
        raise ValueError(impl)

    out = measured(run)
    if impl == "sklearn":
        out["seconds"] *= n / sample
    if impl in ("ours", "ours+class"):  # the same 500 queries, for the agreement check with scikit-learn
        out["mAP_sample"] = retrieval_metrics(query[:sample], gallery, ids[:sample], ids)["mAP"]
    return out


def bench_retrieval(n: int, sample: int, repeats: int) -> list[str]:
    results: dict[str, list[dict]] = {}
    for _ in range(repeats):  # interleaved: each implementation once per round, each in its own process
        for impl in ("matmul", "ours", "ours+class", "torchmetrics", "sklearn"):
            command = [
                sys.executable,
                "-m",
                "benchmarks.cost",
                "--measure",
                impl,
                "--n",
                str(n),
                "--sample",
                str(sample),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results.setdefault(impl, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    seconds = {impl: statistics.median(r["seconds"] for r in rs) for impl, rs in results.items()}
    sklearn_map = results["sklearn"][0]["mAP"]
    lines = [
        f"| {n:,} × {n:,}, d = 128 | seconds (median of {repeats}) | × matmul | torchmetrics / this "
        "| peak MB during the call | mAP |",
        "|---|---|---|---|---|---|",
    ]
    for impl, rs in results.items():
        value = rs[0].get("mAP")
        note = f"{value:.6f}" if value is not None else "-"
        if impl == "sklearn":
            note += f" ({sample} queries, time extrapolated)"
        lines.append(
            f"| {impl} | {seconds[impl]:.2f} | {seconds[impl] / seconds['matmul']:.1f} | "
            f"{seconds['torchmetrics'] / seconds[impl]:.1f} | {max(r['peak_mb'] for r in rs):.0f} | {note} |"
        )
    agreement = abs(results["ours"][0]["mAP_sample"] - sklearn_map)
    lines.append(f"\nours vs scikit-learn on the same {sample} queries: |Δ mAP| = {agreement:.2e}")
    print("\n".join(lines), flush=True)
    return lines


# -- 5. large data: one array per dataset and modality vs one file per row ---------------------------------------
LARGE_DATASETS = {"a": ("x", "y"), "b": ("y", "z")}  # z is a's hidden target: present in its val/test rows


def write_large(root: Path, rows: int, dim: int = 256) -> None:
    """The same features twice: one ``.npy`` per dataset and modality, and one ``.npy`` file per row and modality."""
    g = np.random.default_rng(0)
    (root / "files").mkdir(parents=True)
    for ds in LARGE_DATASETS:
        u = g.random(rows)
        split = np.where(u < 0.6, "train", np.where(u < 0.8, "val", "test"))  # 60 / 20 / 20
        frame = pd.DataFrame(
            {"id": [f"{ds}{i}" for i in range(rows)], "label": g.integers(0, 10, rows), "split": split}
        )
        frame.to_csv(root / f"{ds}.csv", index=False)
        per_row = frame.copy()
        for m in ("x", "y", "z"):
            values = g.standard_normal((rows, dim)).astype(np.float32)
            np.save(root / f"{ds}_{m}.npy", values)
            names = [f"files/{ds}_{m}_{i}.npy" for i in range(rows)]
            for name, row in zip(names, values, strict=True):
                np.save(root / name, row)
            per_row[m] = names
        per_row.to_csv(root / f"{ds}_files.csv", index=False)


def measure_large(layout: str, root: Path) -> dict[str, float]:
    """Setup, modality statistics and one training epoch of a two-dataset manifest experiment, in a fresh process."""
    from datamodules import ManifestDataModule

    used = {"a": ("x", "y", "z"), "b": ("y", "z")}  # each dataset's training modalities, plus a's scored target
    arrays = {ds: {m: str(root / f"{ds}_{m}.npy") for m in mods} for ds, mods in used.items()}

    def run() -> dict:
        dm = ManifestDataModule(
            manifests={ds: str(root / (f"{ds}.csv" if layout == "arrays" else f"{ds}_files.csv")) for ds in used},
            modalities={"x": "features", "y": "features", "z": "features"},
            datasets={ds: {"modalities": list(mods)} for ds, mods in LARGE_DATASETS.items()},
            pivot="y", flows=[{"dataset": "a", "flow": "x->y->z"}], batch_size=256,
            **({"arrays": arrays} if layout == "arrays" else {}),
        )  # fmt: skip
        dm.setup()
        dm.modality_info()
        return {"batches": sum(1 for _ in dm.train_dataloader())}

    return measured(run)


def bench_large(rows: int) -> list[str]:
    lines = [
        f"| {rows:,} rows per dataset, 2 datasets, 3 features × 256 | seconds | peak MB during the call |",
        "|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        write_large(Path(tmp), rows)
        for layout in ("arrays", "files"):
            command = [sys.executable, "-m", "benchmarks.cost", "--measure", f"large:{layout}", "--root", tmp]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            name = "one array per dataset and modality" if layout == "arrays" else "one .npy file per row"
            lines.append(f"| {name} | {result['seconds']:.1f} | {result['peak_mb']:.0f} |")
    lines.append("\n(setup with validation of every row, the standardisation statistics, one training epoch)")
    print("\n".join(lines), flush=True)
    return lines


# -- 7. a whole run ------------------------------------------------------------------------------------------------
def bench_run() -> list[str]:
    """Wall time and the run's own peak memory: the child reports the high-water mark of its resident memory (VmHWM,
    Linux). Not its ru_maxrss, which Linux carries across the exec from the fork of this process, so it would be at
    least this process's own memory; nor RUSAGE_CHILDREN, the largest of every child so far."""
    script = (
        "import re, sys\n"
        "from brokenbind import api\n"
        "try:\n    api.fit(sys.argv[1], sys.argv[2:])\n"
        "finally:\n"
        "    hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1]\n"
        "    print('peak_kb', hwm, file=sys.stderr)\n"
    )
    with tempfile.TemporaryDirectory() as cwd:
        config = str(EXPERIMENT.resolve())
        command = [sys.executable, "-c", script, config, "--trainer.enable_progress_bar=false"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
    peak = int(done.stderr.rsplit("peak_kb", 1)[1].split()[0]) / 1024
    run = "`brokenbind fit --config experiments/two_dataset.yaml` (50 epochs + test)"
    line = f"{run}: {seconds:.1f} s, peak {peak:.0f} MB"
    print(line, flush=True)
    return [line]


# -- 8. import time ---------------------------------------------------------------------------------------------------
IMPORTS = {  # what a user imports, each alone in a fresh interpreter, beside what it stands on
    "torch": "import torch",
    "lightning.pytorch": "import lightning.pytorch",
    "the library (brokenbind.module, .methods)": "import brokenbind.module, brokenbind.methods",
    "the application (brokenbind.api)": "import brokenbind.api",
    "the command (brokenbind.cli)": "import brokenbind.cli",
}


def bench_imports(rounds: int) -> list[str]:
    """Seconds from a fresh interpreter's start to the end of each import, median (range) over ``rounds``, the
    imports taking turns; the bare interpreter's start is the first row."""
    statements = {"python (nothing imported)": "pass", **IMPORTS}
    seconds: dict[str, list[float]] = {name: [] for name in statements}
    for _ in range(rounds):
        for name, statement in statements.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", statement], check=True)
            seconds[name].append(time.perf_counter() - start)
    lines = ["| import | seconds | range |", "|---|---|---|"]
    for name, values in seconds.items():
        lines.append(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} |")
    print("\n".join(lines), flush=True)
    return lines


# -- 6. validation against training; 4. the feature cache -------------------------------------------------------
class EpochTimer(Callback):
    """Seconds of each training epoch and of each validation epoch (listed after the scoring callback, so the
    validation time includes the retrieval metrics)."""

    def __init__(self):
        self.seconds: list[float] = []
        self.validation: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self.start)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validation.append(time.perf_counter() - self.validation_start)


def bench_validation(epochs: int) -> list[str]:
    """Per-epoch validation (embedding both eval datasets and scoring every flow) against a training epoch."""
    dm = MfeatDataModule(
        datasets=TWO_DATASETS, pivot="pix", batch_size=64,
        flows=[{"dataset": "evaluation", "flow": "fou->pix->zer"}, {"dataset": "support", "flow": "zer->pix->fou"}],
    )  # fmt: skip
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as root:  # EmergentBinding writes its results.csv there
        trainer = Trainer(
            max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[EmergentBinding(), timer], default_root_dir=root,
        )  # fmt: skip
        trainer.fit(BindingModule(BrokenBind(consistency_epochs=0)), datamodule=dm)
    train, val = statistics.median(timer.seconds), statistics.median(timer.validation)
    lines = [
        "| two_dataset, both flows scored, batch 64 | median seconds over epochs |",
        "|---|---|",
        f"| training epoch (brokenbind, MOX on) | {train:.3f} |",
        f"| validation epoch (embed, instance and class mAP, R@k) | {val:.3f} ({val / train:.2f} × training) |",
    ]
    print("\n".join(lines), flush=True)
    return lines


def map_inputs(rows: int, width: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``rows`` synthetic pivot features and a nonlinear target of them, ``width`` features each."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=g)
    return x, torch.tanh(x @ torch.randn(width, width, generator=g) / width**0.5) + 0.1 * torch.randn(rows, width)


def bench_map(sizes: list[tuple[int, int]], rounds: int) -> list[str]:
    """The default's kernel map pivot → target (``transition: auto`` on frozen backbones), one map, as
    ``PivotImputer.fit`` builds it: the memory capped at ``KERNEL_ROWS`` rows, (λ, width) chosen by validation error on
    at most ``KERNEL_GRID_ROWS`` of them (``transfer.choose``, 20 candidates), the final fit, and completing one 256-row
    batch; against choosing on the whole memory by one general solve per candidate (``fit_kernel_ridge``, the way
    before both speed-ups), whose validation errors also score the faster choice (its error over the best one's: 1 is
    the same choice). Validation rows are a quarter of the memory."""
    from brokenbind.methods.impute import KERNEL_GRID_ROWS, KERNEL_ROWS, PivotImputer, at_most
    from brokenbind.transfer import choose, fit_kernel_ridge, fit_pivot_map, predict_kernel_ridge

    lines = [
        "| supporting rows × features | choose (s) | choose on every row, a solve per candidate (s) | ratio | "
        "its validation error, relative | final fit (s) | 256-row batch (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for rows, width in sizes:
        n = min(rows, KERNEL_ROWS)
        (x, y), (vx, vy) = map_inputs(n, width), map_inputs(max(n // 4, 50), width, seed=1)
        grid = PivotImputer("MOX", regressor="kernel").grid(x)
        seconds: dict[str, list[float]] = {"choose": [], "solves": [], "fit": [], "batch": []}
        for _ in range(rounds):  # interleaved, so that the machine's load falls on both ways alike
            start = time.perf_counter()
            (ridge, gamma), _ = choose("kernel", *at_most(KERNEL_GRID_ROWS, x, y), vx, vy, grid)
            seconds["choose"].append(time.perf_counter() - start)
            start = time.perf_counter()
            reference = {
                (r, g): (predict_kernel_ridge(fit_kernel_ridge(x, y, r, g), vx) - vy.double()).pow(2).mean().item()
                for r, g in grid
            }
            seconds["solves"].append(time.perf_counter() - start)
            start = time.perf_counter()
            mapping = fit_pivot_map(x, y, x, "none", ridge, "kernel", gamma)
            seconds["fit"].append(time.perf_counter() - start)
            start = time.perf_counter()
            mapping(vx[:256])
            seconds["batch"].append(time.perf_counter() - start)
        median = {k: statistics.median(v) for k, v in seconds.items()}
        ratios = [b / a for a, b in zip(seconds["choose"], seconds["solves"], strict=True)]
        lines.append(
            f"| {rows:,} × {width:,}{f' (capped at {n:,})' if n < rows else ''} | {median['choose']:.2f} | "
            f"{median['solves']:.2f} | {statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | "
            f"{reference[ridge, gamma] / min(reference.values()):.4f} | {median['fit']:.2f} | "
            f"{1000 * median['batch']:.1f} |"
        )
        print(lines[-1], flush=True)
    return lines


def epoch_seconds(cached: bool) -> tuple[float, float]:
    """Seconds of the first and second training epoch on the digits with frozen pretrained backbones."""
    dm = DigitsDataModule(
        datasets={"first": {"modalities": ["image", "text"]}, "second": {"modalities": ["text", "image"]}},
        pivot="text",
        flows=[{"dataset": "first", "flow": "image->text->text"}],
        per_class=30,
        image_size=32,
        batch_size=32,
    )
    backbones = {
        "image": {
            "name": "timm",
            "model": "tf_efficientnet_lite0",
            "weights": "efficientnet_lite0_wheel",
            "image_size": 128,
        },
        "text": "minilm",
    }
    timer = EpochTimer()
    trainer = Trainer(
        max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(BindingModule(FABind(), backbones=backbones, feature_cache=cached), datamodule=dm)
    return timer.seconds[0], timer.seconds[1]


def bench_cache() -> list[str]:
    lines = ["| frozen Lite0 + MiniLM, digits | 1st epoch s | 2nd epoch s | 1st / 2nd |", "|---|---|---|---|"]
    for cached in (True, False):
        first, second = epoch_seconds(cached)
        lines.append(f"| cache {'on' if cached else 'off'} | {first:.2f} | {second:.2f} | {first / second:.1f} |")
    print("\n".join(lines), flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, a 2,000 × 2,000 retrieval")
    parser.add_argument("--out", default=str(Path("benchmarks") / "results" / "cost.md"))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one retrieval measurement in this process
    parser.add_argument("--n", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument("--sample", type=int, default=500, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    silence_known_warnings()
    seed_everything(0, verbose=False)  # training loaders order by the run's seed (datamodules.base.run_seed)
    if args.measure and args.measure.startswith("large:"):
        print(json.dumps(measure_large(args.measure.removeprefix("large:"), Path(args.root))))
        return
    if args.measure:
        print(json.dumps(measure_retrieval(args.measure, args.n, args.sample)))
        return
    rounds, repeats, n = (3, 5, 2_000) if args.quick else (7, 15, 10_000)
    # --quick: a memory above the grid's row cap at a smaller cost
    map_sizes = [(600, 240), (3_000, 256)] if args.quick else [(600, 240), (4_096, 512), (20_000, 1_280)]
    header = [
        "# Cost benchmarks",
        "",
        f"`{' '.join(['python -m benchmarks.cost', *(argv if argv is not None else sys.argv[1:])])}` on "
        f"{platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{time.strftime('%Y-%m-%d')}. Ratios are measured within one process, methods interleaved; absolute times "
        "depend on the machine's load.",
    ]
    api.quiet_lightning()
    with tempfile.TemporaryDirectory() as root:  # the run directories of the runs that build the timed models
        steps = bench_steps([8, 64, 256], rounds, repeats, Path(root))
        overhead = bench_overhead(64, repeats * 2, rounds, Path(root))
        profiled = bench_profile(64, 20, Path(root))
    sections = [
        ("## Training step (ms, median over rounds)", steps),
        ("## A Lightning fit against a bare PyTorch loop of the same math (batch 64 per dataset)", overhead),
        ("## Where a BrokenBind training batch goes (torch.profiler)", profiled),
        ("## Exact retrieval", bench_retrieval(n, min(500, n), 1 if args.quick else 3)),
        ("## Feature cache", bench_cache()),
        ("## Large data", bench_large(5_000 if args.quick else 20_000)),
        ("## Validation against training, per epoch", bench_validation(5 if args.quick else 10)),
        ("## A whole run", bench_run()),
        ("## Import time (fresh interpreter)", bench_imports(3 if args.quick else 7)),
        ("## The default's kernel map (one map, median over rounds)", bench_map(map_sizes, 1 if args.quick else 3)),
    ]
    report = "\n".join(header + [f"\n{title}\n\n" + "\n".join(lines) for title, lines in sections]) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()
