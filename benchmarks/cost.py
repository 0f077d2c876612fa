"""Cost benchmarks (the cost part of ``make bench``): what BrokenBind costs beside fine-tuning, and evaluation.

This 2-core CPU is noisy (timings swing 2× when anything else runs), so every comparison is made inside one process,
methods interleaved round by round, and reported as ratios with their range over rounds; absolute times are context.

1. ``step``: training-step time (forward, loss, backward, AdamW) of each method at 8, 64 and 256 rows per dataset on
   the two_dataset mfeat batch, (a) on cached features (the standardised views) and (b) with a frozen timm backbone
   in the step (EfficientNet-Lite0, random weights: the cost is the same, on mfeat's pix view as a 64×64 image).
   MOX is on.
2. ``profile``: torch.profiler on the BrokenBind step at batch 64: the share of the step in the pseudo-inverses and
   in each loss term's forward pass, and in backward + optimiser.
3. ``retrieval``: exact instance mAP + R@1/5/10 (and class mAP) on a 10,000 × 10,000 query × gallery (d = 128), ours
   vs torchmetrics' RetrievalMAP (fed the same scores shifted into (0, 1], its documented domain) vs a scikit-learn
   per-query loop (timed on 500 queries, extrapolated). Each runs in its own process, so its peak memory is its own;
   values are checked against scikit-learn on the same 500 queries.
4. ``cache``: the first and second training epoch with frozen EfficientNet-Lite0 + MiniLM on the built-in digits,
   with and without the feature cache (needs espeak-ng).
5. ``large``: a two-dataset manifest experiment whose features are one memory-mapped ``.npy`` per dataset and
   modality, against the same features as one ``.npy`` file per row: setup + statistics + one epoch, time and peak
   memory, each in its own process.
6. ``validation``: one validation epoch (embedding both evaluation datasets and scoring every flow) against one
   training epoch.
7. ``run``: wall time and peak memory of ``brokenbind fit --config experiments/two_dataset.yaml`` (50 epochs + test),
   run from the working directory's ``experiments/``.

``--quick`` (``make bench-quick``) uses fewer rounds and a 2,000 × 2,000 retrieval. The Markdown report goes to
``--out`` (default ``benchmarks/results/cost.md``) with the command and versions that produced it.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.profiler import ProfilerActivity, profile, record_function

import brokenbind.methods.brokenbind as brokenbind_method
from brokenbind.backbones import ModalityInfo
from brokenbind.callbacks import EmergentBinding
from brokenbind.methods import BrokenBind, CentroBind, FABind
from brokenbind.methods.brokenbind import PAPER_RECIPE
from brokenbind.metrics.retrieval import retrieval_metrics
from brokenbind.module import BindingModule, silence_known_warnings
from datamodules import DigitsDataModule, MfeatDataModule

EXPERIMENT = Path("experiments/two_dataset.yaml")  # of the checkout the cost report runs in
METHODS: dict[str, Callable[[], torch.nn.Module]] = {
    "brokenbind": lambda: BrokenBind(consistency_epochs=0),
    "brokenbind_paper": lambda: BrokenBind(consistency_epochs=0, **PAPER_RECIPE),
    "centrobind": CentroBind,
    "fabind": FABind,
}
TWO_DATASETS = {"support": {"modalities": ["pix", "zer"]}, "evaluation": {"modalities": ["fou", "pix"]}}


# -- 1. training steps ---------------------------------------------------------------------------------------------
def mfeat_batch(batch_size: int) -> tuple[dict, dict[str, ModalityInfo]]:
    dm = MfeatDataModule(
        datasets=TWO_DATASETS, pivot="pix", flows=[{"dataset": "evaluation", "flow": "fou->pix->zer"}],
        batch_size=batch_size,
    )  # fmt: skip
    dm.setup()
    batch, _, _ = next(iter(dm.train_dataloader()))
    return {ds: b["x"] for ds, b in batch.items()}, dm.modality_info()


def as_images(batch: dict, info: dict[str, ModalityInfo]) -> tuple[dict, dict[str, ModalityInfo]]:
    """mfeat's pix view is a 16 × 15 image of pixel counts (0-6): present it as a one-channel image."""
    images = {
        ds: {m: (x.view(-1, 1, 16, 15) / 6 if m == "pix" else x) for m, x in mods.items()} for ds, mods in batch.items()
    }
    return images, {**info, "pix": ModalityInfo(kind="image", shape=(1, 16, 15))}


def make_step(
    name: str, batch: dict, info: dict[str, ModalityInfo], backbone: dict | None
) -> tuple[Callable[[], None], BindingModule]:
    torch.manual_seed(0)
    model = BindingModule(METHODS[name](), backbones=backbone)
    model.build(info)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)

    def step() -> None:
        embeddings = {ds: model.embed(x) for ds, x in batch.items()}
        loss = sum(model.method(embeddings, epoch=0).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, model


def interleaved_ms(steps: dict[str, Callable[[], None]], rounds: int, repeats: int) -> dict[str, list[float]]:
    """Per round, the median milliseconds of ``repeats`` calls of each function, the functions taking turns."""
    for fn in steps.values():  # warm-up: allocator, thread pools, lazy inits
        for _ in range(3):
            fn()
    out: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(1000 * (time.perf_counter() - start))
            out[name].append(statistics.median(times))
    return out


def bench_steps(batch_sizes: list[int], rounds: int, repeats: int) -> list[str]:
    lines = [
        "| inputs | batch / dataset | " + " | ".join(f"{m} ms" for m in METHODS) + " | brokenbind / fabind (range) |",
        "|---|---|" + "---|" * len(METHODS) + "---|",
    ]
    timm = {"pix": {"name": "timm", "model": "tf_efficientnet_lite0", "image_size": 64}}
    for inputs in ("cached features", "frozen timm in the step"):
        for batch_size in batch_sizes:
            batch, info = mfeat_batch(batch_size)
            backbone = None
            if inputs != "cached features":
                batch, info = as_images(batch, info)
                backbone = timm
            steps = {name: make_step(name, batch, info, backbone)[0] for name in METHODS}
            ms = interleaved_ms(steps, rounds, repeats if backbone is None else max(1, repeats // 5))
            ratios = [b / f for b, f in zip(ms["brokenbind"], ms["fabind"], strict=True)]
            cells = " | ".join(f"{statistics.median(ms[m]):.1f}" for m in METHODS)
            ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            lines.append(f"| {inputs} | {batch_size} | {cells} | {ratio} |")
            print(lines[-1], flush=True)
    return lines


# -- 2. profile ----------------------------------------------------------------------------------------------------
def labelled(fn: Callable, label: str) -> Callable:
    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)

    return wrapper


def bench_profile(batch_size: int, steps: int) -> list[str]:
    batch, info = mfeat_batch(batch_size)
    step, model = make_step("brokenbind", batch, info, None)
    for _ in range(3):
        step()
    # label the pieces from outside, so the library carries no profiling code
    terms = ("clip", "symmetry", "extrapolation")
    original_pinv = brokenbind_method.pivot_pinv
    brokenbind_method.pivot_pinv = labelled(original_pinv, "pseudo-inverse")
    for term in terms:
        setattr(model.method, term, labelled(getattr(model.method, term), f"loss {term}"))
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                with record_function("step"):
                    step()
    finally:
        brokenbind_method.pivot_pinv = original_pinv
        for term in terms:
            del model.method.__dict__[term]
    totals = {e.key: e.cpu_time_total for e in prof.key_averages()}
    whole = totals["step"]
    backward = sum(t for k, t in totals.items() if k.startswith("autograd::engine::evaluate_function"))
    rows = {
        "pseudo-inverses (forward)": totals.get("pseudo-inverse", 0.0),
        "L_CLIP + push-away (forward)": totals.get("loss clip", 0.0),
        "L_Sym / CyCLIP (forward)": totals.get("loss symmetry", 0.0),
        "L_MOX + R_Fro incl. pseudo-inverses (forward)": totals.get("loss extrapolation", 0.0),
        "backward (all terms)": backward,
    }
    lines = ["| part of a BrokenBind step, batch 64 | share of the step |", "|---|---|"]
    lines += [f"| {name} | {100 * t / whole:.1f} % |" for name, t in rows.items()]
    print("\n".join(lines), flush=True)
    return lines


# -- 3. retrieval --------------------------------------------------------------------------------------------------
def retrieval_inputs(n: int, d: int = 128) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(n, d, generator=g), dim=1)
    gallery = F.normalize(query + 0.8 * torch.randn(n, d, generator=g), dim=1)
    labels = torch.randint(0, 10, (n,), generator=g)
    return query, gallery, torch.arange(n), labels


def measured(fn: Callable[[], dict]) -> dict:
    """``fn()``'s result with its seconds and its peak resident memory above the memory before it (MB), sampled by a
    thread every 2 ms: a process's lifetime peak (ru_maxrss) would include imports and earlier work."""
    base = current_rss_mb()
    peak, stop = base, threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, current_rss_mb())
            stop.wait(0.002)

    sampler = threading.Thread(target=poll)
    sampler.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
    return {**result, "seconds": seconds, "peak_mb": max(peak, current_rss_mb()) - base}


def current_rss_mb() -> float:
    """Resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


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
            name = "one memory-mapped array per dataset and modality" if layout == "arrays" else "one .npy file per row"
            lines.append(f"| {name} | {result['seconds']:.1f} | {result['peak_mb']:.0f} |")
    lines.append("\n(setup with validation of every row, the standardisation statistics, one training epoch)")
    print("\n".join(lines), flush=True)
    return lines


# -- 7. a whole run ------------------------------------------------------------------------------------------------
def bench_run() -> list[str]:
    """Wall time and the run's own peak memory (the child reports its ru_maxrss: RUSAGE_CHILDREN would be the largest
    of every child so far, e.g. the torchmetrics measurement)."""
    script = (
        "import resource, sys\n"
        "from brokenbind import api\n"
        "try:\n    api.fit(sys.argv[1], sys.argv[2:])\n"
        "finally:\n    print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
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
    header = [
        "# Cost benchmarks",
        "",
        f"`{' '.join(['python -m benchmarks.cost', *(argv if argv is not None else sys.argv[1:])])}` on "
        f"{platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{time.strftime('%Y-%m-%d')}. Ratios are measured within one process, methods interleaved; absolute times "
        "depend on the machine's load.",
    ]
    sections = [
        ("## Training step (ms, median over rounds)", bench_steps([8, 64, 256], rounds, repeats)),
        ("## Where a BrokenBind step goes (torch.profiler)", bench_profile(64, 20)),
        ("## Exact retrieval", bench_retrieval(n, min(500, n), 1 if args.quick else 3)),
        ("## Feature cache", bench_cache()),
        ("## Large data", bench_large(5_000 if args.quick else 20_000)),
        ("## Validation against training, per epoch", bench_validation(5 if args.quick else 10)),
        ("## A whole run", bench_run()),
    ]
    report = "\n".join(header + [f"\n{title}\n\n" + "\n".join(lines) for title, lines in sections]) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()
