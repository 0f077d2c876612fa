"""Scale benchmarks (the scale part of ``make bench``; alone ``make scale``): time and memory as rows grow.

This 2-core CPU is noisy, so every figure is a median over repeats with its range, comparisons are ratios, and the
cases of a comparison take turns (interleaved) rather than running one after the other.

(a) ``embed``: ``brokenbind embed`` over generated image rows (small PNGs and a manifest) with frozen
    EfficientNet-Lite0 (timm, weights ``efficientnet_lite0_wheel``, as in experiments/digits_real.yaml), 1 process
    and 2 gloo processes (``--hardware ddp_cpu``): rows/s over the whole command and peak resident memory (VmHWM) of
    each process, sampled from outside every 50 ms. Reported as not available until ``brokenbind.embed`` exists.
(b) ``train``: ``brokenbind fit`` on two datasets, (a, b) and (b, c) paired through the pivot b, of N rows each,
    every modality one (N, 512) float16 ``.npy`` array (``data.init_args.arrays``); 1 process and 2
    gloo processes; steps/s over the training steps after a warm-up and each process's VmHWM, with its peak
    anonymous and file-backed resident memory (sampled every 20 ms; file-backed pages are those of the shared
    libraries: the arrays are read from the file, not mapped). Training stops at ``trainer.max_steps``; validation
    runs once, after the last step, on its first ``limit_val_batches`` batches; no sanity validation, no test.
(c) ``retrieval``: exact instance mAP + R@1/5/10 (``metrics.retrieval.retrieval_metrics``, chunked) of Q random
    unit queries against galleries of growing size: seconds and peak memory above the embeddings, each in a fresh
    process; with the default 1,024 query rows per chunk, and with chunks whose score block has a fixed size.
(d) ``class``: class-level mAP (``metrics.retrieval.class_average_precision``) of a Q × Q score matrix against the
    similarity matmul alone and instance mAP + R@k, interleaved in one process, repeated; values checked against
    scikit-learn on 200 queries.

    python -m benchmarks.scale [--quick] [--out DIR] [--work DIR] [--sections a,b,c,d]

Generated data go to ``--work`` (not the repository), are reused when their stamp matches, and are deleted by hand.
The report is ``--out``/scale.md with one CSV row per measurement beside it (scale.csv).
"""

import argparse
import importlib.util
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from benchmarks.memory import measured, status_mb
from brokenbind.metrics.retrieval import class_average_precision, retrieval_metrics
from brokenbind.provenance import commit
from brokenbind.results import markdown_table

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 512  # features per modality in (b)
CLASSES = 10
FULL = {"rows": [100_000, 1_000_000], "steps": 300, "warmup": 30, "repeats": 2, "queries": 100_000,
        "galleries": [25_000, 50_000, 100_000], "class_n": 10_000, "rounds": 5, "embed_rows": 100_000}  # fmt: skip
QUICK = {"rows": [5_000, 20_000], "steps": 60, "warmup": 10, "repeats": 1, "queries": 5_000,
         "galleries": [1_000, 2_000, 4_000], "class_n": 2_000, "rounds": 3, "embed_rows": 2_000}  # fmt: skip
BATCH = 256  # training rows per dataset and process per step
VAL_BATCHES = 2  # validation batches (of eval_batch_size 512 rows) scored once after the last step
CHUNK = 1024  # retrieval_metrics' default query rows per chunk
Row = dict[str, object]


def child_env() -> dict[str, str]:
    """The environment of a measured subprocess: this checkout's packages first (benchmarks for the probe), one
    thread pool setting left to the run (Lightning gives each DDP process its share of the cores)."""
    paths = [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def brokenbind_command() -> list[str]:
    """The ``brokenbind`` command of this interpreter's environment."""
    return [sys.executable, "-m", "brokenbind.cli"]


# -- (b) training on arrays read row by row --------------------------------------------------------------------------
DATASETS = {"ab": ("a", "b", "c"), "bc": ("b", "c")}  # ab's c: the hidden target its val/test rows are scored on


def write_stamp(folder: Path, stamp: dict) -> None:
    (folder / "stamp.json").write_text(json.dumps(stamp, sort_keys=True))


def has_stamp(folder: Path, stamp: dict) -> bool:
    """Generated data are reused only when complete (the stamp is written last) and of the same parameters."""
    path = folder / "stamp.json"
    return path.is_file() and json.loads(path.read_text()) == stamp


def held_out(rows: int) -> int:
    """Validation rows, and test rows, of a generated dataset in (b)."""
    return min(2_048, rows // 5)


def write_training_data(folder: Path, rows: int, chunk: int = 65_536) -> Path:
    """Two manifests (id, label, split) of ``rows`` rows and one (rows, 512) float16 array per dataset and modality,
    written chunk by chunk into ``numpy.lib.format.open_memmap`` files: each row's modalities are noisy linear views
    of one latent near its class centre, so there is something to learn. Validation and test hold ``held_out(rows)``
    random rows each, the rest is training: a held-out set of fixed size, as large datasets have, so that the
    evaluation at the end of a run costs the same at every size. Returns the experiment YAML."""
    stamp = {"rows": rows, "width": WIDTH, "version": 2}
    config = folder / "experiment.yaml"
    if has_stamp(folder, stamp):
        return config
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    latent = 16
    centres = g.standard_normal((CLASSES, latent)).astype(np.float32)
    views = {m: g.standard_normal((latent, WIDTH)).astype(np.float32) / math.sqrt(latent) for m in "abc"}
    arrays: dict[str, dict[str, str]] = {}
    for name, modalities in DATASETS.items():
        labels = g.integers(0, CLASSES, rows)
        order, held = np.argsort(g.random(rows)), held_out(rows)
        split = np.full(rows, "train", dtype=object)
        split[order[:held]], split[order[held : 2 * held]] = "val", "test"
        frame = pd.DataFrame({"id": [f"{name}{i}" for i in range(rows)], "label": labels, "split": split})
        frame.to_csv(folder / f"{name}.csv", index=False)
        files = {
            m: np.lib.format.open_memmap(folder / f"{name}_{m}.npy", "w+", np.float16, (rows, WIDTH))
            for m in modalities
        }
        for start in range(0, rows, chunk):
            part = slice(start, min(start + chunk, rows))
            z = centres[labels[part]] + g.standard_normal((part.stop - start, latent), dtype=np.float32)
            for m, out in files.items():
                out[part] = z @ views[m] + 0.5 * g.standard_normal((part.stop - start, WIDTH), dtype=np.float32)
        for out in files.values():
            out.flush()
        arrays[name] = {m: str(folder / f"{name}_{m}.npy") for m in modalities}
    experiment = {
        "data": {
            "class_path": "datamodules.ManifestDataModule",
            "init_args": {
                "manifests": {name: str(folder / f"{name}.csv") for name in DATASETS},
                "modalities": dict.fromkeys("abc", "features"),
                "datasets": {"ab": {"modalities": ["a", "b"]}, "bc": {"modalities": ["b", "c"]}},
                "pivot": "b",
                "flows": [{"dataset": "ab", "flow": "a->b->c"}],
                "arrays": arrays,
                "batch_size": BATCH,
            },
        }
    }
    config.write_text(yaml.safe_dump(experiment, sort_keys=False))
    write_stamp(folder, stamp)
    return config


class RunFailed(Exception):
    """A measured run that exited with an error or did not end in time: reported as a failure, never dropped."""


def train_once(config: Path, processes: int, steps: int, warmup: int, logs: Path, timeout: float) -> list[dict]:
    """One ``brokenbind fit`` on ``config``: the probe's record of each process. A run that has not ended after
    ``timeout`` seconds is killed with every process it started (a DDP process waiting forever in a collective)."""
    probe = Path(tempfile.mkdtemp(dir=logs))
    command = [
        *brokenbind_command(), "fit", "--config", str(config), *(["--hardware", "ddp_cpu"] if processes == 2 else []),
        f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1",
        "--model.method.init_args.consistency_epochs=0", f"--trainer.val_check_interval={steps}",
        "--trainer.check_val_every_n_epoch=null",
        f"--trainer.limit_val_batches={VAL_BATCHES}", "--trainer.num_sanity_val_steps=0", "--test_after_fit=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={logs}",
        "--trainer.callbacks+=benchmarks.probe.Probe", f"--trainer.callbacks.out={probe}",
        f"--trainer.callbacks.warmup={warmup}",
    ]  # fmt: skip
    stderr = logs / f"{probe.name}.stderr"
    with stderr.open("w") as errors:
        child = subprocess.Popen(
            command, env=child_env(), stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True
        )
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise RunFailed(f"no end within {timeout:.0f} s, killed (stderr: {stderr})") from None
    if code:
        raise RunFailed(f"exit code {code} (stderr: {stderr})")
    records = [json.loads(p.read_text()) for p in sorted(probe.glob("rank*.json"))]
    if len(records) != processes:
        raise RuntimeError(f"{processes} processes ran, {len(records)} probe records in {probe}")
    return records


def bench_train(
    work: Path, sizes: list[int], steps: int, warmup: int, repeats: int, timeout: float, log: Callable
) -> list[Row]:
    configs = {n: write_training_data(work / f"train_{n}", n) for n in sizes}
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for repeat in range(repeats):  # interleaved: every (rows, processes) case once per repeat
        for n in sizes:
            for processes in (1, 2):
                case = {"section": "train", "rows": n, "processes": processes, "repeat": repeat}
                try:
                    records = train_once(configs[n], processes, steps, warmup, logs, timeout)
                except RunFailed as failure:
                    rows.append({**case, "quantity": "failed", "value": 1, "note": str(failure)})
                    log(f"train {n:,} rows, {processes} process(es), repeat {repeat}: FAILED, {failure}")
                    continue
                for record in records:
                    case["rank"] = record["rank"]
                    step = record["step_seconds"]
                    rows += [
                        {**case, "quantity": "steps_per_s", "value": 1 / statistics.median(step)},
                        {**case, "quantity": "steps_per_s_overall", "value": len(step) / sum(step)},
                        {**case, "quantity": "vmhwm_mb", "value": record["vmhwm_mb"]},
                        {**case, "quantity": "anon_peak_mb", "value": record["anon_mb"]},
                        {**case, "quantity": "file_peak_mb", "value": record["file_mb"]},
                    ]
                log(f"train {n:,} rows, {processes} process(es), repeat {repeat}: {rows[-5:]}")
    return rows


# -- (c) instance retrieval against growing galleries --------------------------------------------------------------
def unit_embeddings(n: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def measure_retrieval(queries: int, gallery: int, dim: int, chunk: int) -> dict[str, float]:
    """In a fresh process: instance mAP + R@k of ``queries`` unit queries (each relevant to its own gallery row, or
    to none beyond the gallery) against ``gallery`` rows; seconds and peak RSS above the embeddings and ids."""
    query, items = unit_embeddings(queries, dim, 0), unit_embeddings(gallery, dim, 1)
    items[: min(queries, gallery)] = F.normalize(query[:gallery] + 0.5 * items[: min(queries, gallery)], dim=1)
    query_ids, gallery_ids = torch.arange(queries), torch.arange(gallery)
    return measured(lambda: retrieval_metrics(query, items, query_ids, gallery_ids, chunk_size=chunk))


def bench_retrieval(queries: int, galleries: list[int], dim: int, repeats: int, log: Callable) -> list[Row]:
    rows: list[Row] = []
    block = CHUNK * galleries[0]  # the score block of the smallest gallery at the default chunk: held fixed
    for repeat in range(repeats):
        for gallery in galleries:
            for chunking, chunk in (("default", CHUNK), ("fixed_block", max(1, block // gallery))):
                command = [sys.executable, "-m", "benchmarks.scale", "--measure", "retrieval",
                           "--queries", str(queries), "--gallery", str(gallery), "--dim", str(dim),
                           "--chunk", str(chunk)]  # fmt: skip
                done = subprocess.run(command, env=child_env(), capture_output=True, text=True, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                case = {"section": "retrieval", "rows": gallery, "queries": queries, "chunk": chunk,
                        "chunking": chunking, "repeat": repeat}  # fmt: skip
                rows += [
                    {**case, "quantity": "seconds", "value": result["seconds"]},
                    {**case, "quantity": "peak_above_inputs_mb", "value": result["peak_mb"]},
                    {**case, "quantity": "mAP", "value": result["mAP"]},
                    {**case, "quantity": "R@1", "value": result["R@1"]},
                ]
                log(f"retrieval {queries:,} x {gallery:,} chunk {chunk}: {result}")
    return rows


# -- (d) class-level mAP against the matmul and instance metrics -------------------------------------------------
def bench_class(n: int, dim: int, rounds: int, log: Callable) -> list[Row]:
    """In this process, the three take turns each round; the class mAP is timed on a given score matrix."""
    from sklearn.metrics import average_precision_score

    query, gallery = unit_embeddings(n, dim, 0), unit_embeddings(n, dim, 1)
    gallery = F.normalize(query + 0.8 * gallery, dim=1)
    g = torch.Generator().manual_seed(2)
    query_labels, gallery_labels = (
        torch.randint(0, CLASSES, (n,), generator=g),
        torch.randint(0, CLASSES, (n,), generator=g),
    )
    ids = torch.arange(n)
    scores = query @ gallery.T
    timed = {
        "matmul": lambda: query @ gallery.T,
        "instance mAP + R@k": lambda: retrieval_metrics(query, gallery, ids, ids),
        "class mAP": lambda: class_average_precision(scores, query_labels, gallery_labels),
    }
    for fn in timed.values():  # warm-up: thread pools, allocator
        fn()
    rows: list[Row] = []
    for repeat in range(rounds):
        for name, fn in timed.items():
            start = time.perf_counter()
            fn()
            rows.append({"section": "class", "rows": n, "case": name, "repeat": repeat, "quantity": "seconds",
                         "value": time.perf_counter() - start})  # fmt: skip
    sample = 200
    ours = class_average_precision(scores[:sample], query_labels[:sample], gallery_labels)
    reference = [
        average_precision_score((gallery_labels == query_labels[q]).numpy(), scores[q].numpy()) for q in range(sample)
    ]
    rows.append({"section": "class", "rows": n, "case": "class mAP", "repeat": 0, "quantity": "max_abs_diff_sklearn",
                 "value": float((ours - torch.tensor(reference, dtype=torch.float64)).abs().max())})  # fmt: skip
    log(f"class {n:,}: {rows[-4:]}")
    return rows


# -- (a) embed ----------------------------------------------------------------------------------------------------
def embed_available() -> bool:
    return importlib.util.find_spec("brokenbind.embed") is not None


def write_image_rows(folder: Path, rows: int) -> Path:
    """``rows`` 32 × 32 RGB PNGs (a class template plus noise) in a manifest ``pictures.csv`` (id, image, label,
    split) whose pivot b and target c come from small feature arrays, and a second dataset ``other`` (b, c) of 1,000
    rows; the experiment encodes ``image`` with frozen EfficientNet-Lite0. Returns the experiment YAML."""
    from PIL import Image

    stamp = {"rows": rows, "version": 1}
    config = folder / "experiment.yaml"
    if has_stamp(folder, stamp):
        return config
    g = np.random.default_rng(0)
    templates = g.integers(0, 256, (CLASSES, 32, 32, 3))
    labels = g.integers(0, CLASSES, rows)
    names = []
    for i in range(rows):
        name = f"img/{i // 1000:04d}/{i:07d}.png"
        if i % 1000 == 0:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(templates[labels[i]] + g.integers(-40, 41, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)
        names.append(name)
    u = g.random(rows)
    split = np.where(u < 0.6, "train", np.where(u < 0.8, "val", "test"))
    pd.DataFrame({"id": [f"p{i}" for i in range(rows)], "image": names, "label": labels, "split": split}).to_csv(
        folder / "pictures.csv", index=False
    )
    other = 1_000
    other_split = np.where(g.random(other) < 0.6, "train", "val")
    pd.DataFrame(
        {"id": [f"o{i}" for i in range(other)], "label": g.integers(0, CLASSES, other), "split": other_split}
    ).to_csv(folder / "other.csv", index=False)
    arrays: dict[str, dict[str, str]] = {}
    for name, count in (("pictures", rows), ("other", other)):
        for m in "bc":
            np.save(folder / f"{name}_{m}.npy", g.standard_normal((count, 16)).astype(np.float32))
        arrays[name] = {m: str(folder / f"{name}_{m}.npy") for m in "bc"}
    experiment = {
        "data": {
            "class_path": "datamodules.ManifestDataModule",
            "init_args": {
                "manifests": {"pictures": str(folder / "pictures.csv"), "other": str(folder / "other.csv")},
                "modalities": {"image": "image", "b": "features", "c": "features"},
                "datasets": {"pictures": {"modalities": ["image", "b"]}, "other": {"modalities": ["b", "c"]}},
                "pivot": "b",
                "flows": [{"dataset": "pictures", "flow": "image->b->c"}],
                "arrays": arrays,
                "image_size": 32,
                "image_channels": 3,
                "batch_size": 4,  # training batches: unused by embed (it encodes eval_batch_size rows at a time)
            },
        },
        "model": {
            "backbones": {
                "image": {"name": "timm", "model": "tf_efficientnet_lite0", "weights": "efficientnet_lite0_wheel",
                          "image_size": 128},
            }
        },
    }  # fmt: skip
    config.write_text(yaml.safe_dump(experiment, sort_keys=False))
    write_stamp(folder, stamp)
    return config


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    tree, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for path in Path("/proc").glob(f"{parent}/task/*/children"):
            try:
                children = [int(c) for c in path.read_text().split()]
            except OSError:
                continue
            tree += children
            frontier += children
    return tree


def embed_once(config: Path, out: Path, processes: int) -> dict:
    """One ``brokenbind embed``: seconds, and each process's VmHWM sampled from outside every 50 ms (the last value
    seen; VmHWM only grows)."""
    command = [*brokenbind_command(), "embed", "--config", str(config), "--out", str(out), "--modalities=[image]",
               "--dtype", "float16", *(["--hardware", "ddp_cpu"] if processes == 2 else [])]  # fmt: skip
    stderr = out.with_name(f"{out.name}.stderr")  # a file, not a pipe: nobody reads a pipe while the run writes
    start = time.perf_counter()
    with stderr.open("w") as errors:
        child = subprocess.Popen(command, env=child_env(), stdout=subprocess.DEVNULL, stderr=errors)
        peaks: dict[int, float] = {}
        while child.poll() is None:
            for pid in process_tree(child.pid):
                peaks[pid] = max(peaks.get(pid, 0.0), status_mb(pid).get("VmHWM", 0.0))
            time.sleep(0.05)
    seconds = time.perf_counter() - start
    if child.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{stderr.read_text()[-3000:]}")
    return {"seconds": seconds, "vmhwm_mb": sorted(peaks.values(), reverse=True)[:processes]}


def bench_embed(work: Path, rows: int, repeats: int, log: Callable) -> list[Row]:
    config = write_image_rows(work / f"embed_{rows}", rows)
    result: list[Row] = []
    for repeat in range(repeats):
        for processes in (1, 2):
            out = work / f"embed_{rows}" / f"out_{processes}"
            subprocess.run(["rm", "-rf", str(out)], check=True)  # a fresh output: nothing to resume
            measured_run = embed_once(config, out, processes)
            case = {"section": "embed", "rows": rows, "processes": processes, "repeat": repeat}
            result.append({**case, "quantity": "rows_per_s", "value": rows / measured_run["seconds"]})
            result += [
                {**case, "rank": r, "quantity": "vmhwm_mb", "value": v} for r, v in enumerate(measured_run["vmhwm_mb"])
            ]
            log(f"embed {rows:,} rows, {processes} process(es), repeat {repeat}: {measured_run}")
    return result


# -- report -------------------------------------------------------------------------------------------------------
def spread(values: list[float], digits: int = 1) -> str:
    """Median and range over repeats: ``12.3 (11.9–12.8)``; a single value alone; "-" for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:,.{digits}f}"
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def ratio(numerators: pd.Series, denominators: pd.Series) -> list[float]:
    """Repeat by repeat (series indexed by repeat), over the repeats both have."""
    return (numerators / denominators).dropna().tolist()


def train_report(df: pd.DataFrame, steps: int, warmup: int) -> list[str]:
    def per_run(n: int, p: int, quantity: str, how: str) -> pd.Series:
        """One value per repeat (indexed by repeat): the mean (steps/s) or the max (memory) over the run's
        processes."""
        got = df[(df["rows"] == n) & (df["processes"] == p) & (df["quantity"] == quantity)]
        return got.groupby("repeat")["value"].agg(how)

    sizes = sorted(df["rows"].unique())
    body = []
    for n in sizes:
        for p in (1, 2):
            failed = len(per_run(n, p, "failed", "sum"))
            rate = per_run(n, p, "steps_per_s", "mean").tolist()
            memory = [spread(per_run(n, p, q, "max").tolist(), 0) for q in ("vmhwm_mb", "anon_peak_mb", "file_peak_mb")]
            overall = spread(per_run(n, p, "steps_per_s_overall", "mean").tolist())
            throughput = spread([r * BATCH * len(DATASETS) * p for r in rate], 0)
            body.append([f"{n:,}", str(p), f"{len(rate)} / {failed}", spread(rate), overall, throughput, *memory])
    header = ["rows per dataset", "processes", "runs ended / failed", "steps/s per process",
              "steps/s, epoch ends included", "rows/s, all processes", "VmHWM per process (MB)", "peak RssAnon (MB)",
              "peak RssFile (MB)"]  # fmt: skip
    lines = markdown_table(header, body)
    small, large = sizes[0], sizes[-1]
    lines.append("")
    failures = df[df["quantity"] == "failed"]
    for failure in failures.itertuples():
        lines.append(f"- failed: {failure.rows:,} rows, {failure.processes} process(es), repeat {failure.repeat}: "
                     f"{failure.note}")  # fmt: skip
    for p in (1, 2):
        memory = ratio(per_run(large, p, "vmhwm_mb", "max"), per_run(small, p, "vmhwm_mb", "max"))
        speed = ratio(per_run(large, p, "steps_per_s", "mean"), per_run(small, p, "steps_per_s", "mean"))
        lines.append(
            f"- {p} process(es), {large:,} rows against {small:,}: VmHWM × {spread(memory, 2)}, "
            f"steps/s × {spread(speed, 2)} (per repeat, median (range))"
        )
    for n in sizes:
        both = ratio(2 * per_run(n, 2, "steps_per_s", "mean"), per_run(n, 1, "steps_per_s", "mean"))
        lines.append(f"- {n:,} rows: rows/s of 2 processes against 1: × {spread(both, 2)}")
    lines += [
        "",
        f"Batch {BATCH} rows per dataset and process, BrokenBind (the default method) with MOX from the first step "
        "(`consistency_epochs=0`), the default `standardize` backbone and MLP heads on each 512-wide float16 array. "
        f"Each run stops at `trainer.max_steps={steps}` (no full epoch at 1M rows). Each step is timed from the end "
        f"of the one before (loading its batch, forward, backward, optimiser), after a warm-up of {warmup} steps; "
        'steps/s per process is 1 / the median step (rows/s: that × batch × 2 datasets × processes); "epoch ends '
        'included" is steps / their total time, which also counts the end-of-epoch work (the last checkpoint, a new '
        f"shuffle) where an epoch ends within the run. Validation runs once, after the last step, on its first "
        f"{VAL_BATCHES} batches of 512 rows (`limit_val_batches`, `val_check_interval`, "
        "`check_val_every_n_epoch=null`); no sanity validation (`num_sanity_val_steps=0`), no test "
        "(`--test_after_fit=false`). Setup (manifest reading and checks) and the standardisation statistics over "
        "every training row are inside the memory figures, outside the steps/s. Memory per process is the largest "
        "over the run's processes; VmHWM counts anonymous memory and file-backed pages (the shared libraries, about "
        "0.45 GB; the arrays are read from the file, not mapped); peak RssAnon and RssFile "
        "are sampled every 20 ms and need not coincide.",
    ]
    return lines


def retrieval_report(df: pd.DataFrame, dim: int) -> list[str]:
    queries = int(df["queries"].iloc[0])
    body = []
    for (gallery, chunking, chunk), got in df.groupby(["rows", "chunking", "chunk"], sort=True):
        values = {q: got[got["quantity"] == q]["value"].tolist() for q in ("seconds", "peak_above_inputs_mb", "mAP")}
        inputs = (queries + gallery) * dim * 4 / 2**20
        body.append([f"{int(gallery):,}", chunking.replace("_", " "), f"{int(chunk):,}", spread(values["seconds"]),
                     spread(values["peak_above_inputs_mb"], 0), f"{int(chunk) * gallery * 4 / 2**20:,.0f}",
                     f"{inputs:,.0f}", f"{queries * gallery * 4 / 2**30:,.1f}", f"{values['mAP'][0]:.4f}"])  # fmt: skip
    return [
        *markdown_table(
            [
                "gallery",
                "chunking",
                "query rows per chunk",
                "seconds",
                "peak MB above the embeddings",
                "one score block (MB)",
                "embeddings (MB)",
                "the full score matrix (GB)",
                "mAP",
            ],
            body,
        ),
        "",
        f"{queries:,} queries, d = {dim} (float32, unit norm), each query relevant to its own gallery row (none where "
        "the gallery is smaller); `retrieval_metrics(query, gallery, ids, ids, chunk_size=...)`, each in a fresh "
        'process, peak resident memory sampled every 2 ms above the memory once the embeddings exist. "default": '
        f'the default {CHUNK:,} query rows per chunk, so one score block grows with the gallery; "fixed block": '
        "query rows per chunk scaled down as the gallery grows, so the block stays the size of the smallest "
        "gallery's.",
    ]


def class_report(df: pd.DataFrame, dim: int) -> list[str]:
    n = int(df["rows"].iloc[0])
    times = df[df["quantity"] == "seconds"].pivot(index="repeat", columns="case", values="value")
    body = [
        [case, spread(times[case].tolist(), 2), spread((times[case] / times["matmul"]).tolist(), 1),
         spread((times[case] / times["instance mAP + R@k"]).tolist(), 2)]
        for case in ("matmul", "instance mAP + R@k", "class mAP")
    ]  # fmt: skip
    diff = float(df[df["quantity"] == "max_abs_diff_sklearn"]["value"].iloc[0])
    return [
        *markdown_table(
            [f"{n:,} × {n:,}, d = {dim}", "seconds", "× matmul (per round)", "× instance mAP + R@k (per round)"], body
        ),
        "",
        f"{len(times)} rounds in one process, the three cases in turn each round (median (range) over rounds). "
        f"`class_average_precision(scores, query_labels, gallery_labels)` on the given {n:,} × {n:,} score matrix "
        f"(its matmul not included), {CLASSES} classes at random; instance mAP + R@1/5/10: `retrieval_metrics` with "
        f"its matmul, chunked. Class AP against scikit-learn's `average_precision_score` on 200 queries: max |Δ| = "
        f"{diff:.1e}.",
    ]


def embed_report(df: pd.DataFrame | None, available: bool) -> list[str]:
    if not available:
        return ["embed not available: `brokenbind.embed` is not in this checkout, so (a) was not measured."]
    body = []
    for (rows, p), got in df.groupby(["rows", "processes"]):
        rate = got[got["quantity"] == "rows_per_s"]["value"].tolist()
        memory = got[got["quantity"] == "vmhwm_mb"].groupby("repeat")["value"].max().tolist()
        body.append([f"{int(rows):,}", str(int(p)), spread(rate, 0), spread(memory, 0)])
    return [
        *markdown_table(["image rows", "processes", "rows/s", "VmHWM per process (MB)"], body),
        "",
        "`brokenbind embed --modalities image --dtype float16 [--hardware ddp_cpu]` over 32 × 32 PNGs with frozen "
        "EfficientNet-Lite0 at 128 × 128 (timm, ImageNet weights from the efficientnet_lite0_wheel), into a fresh "
        "output each time; rows/s over the whole command (start-up included), VmHWM the largest of the processes, "
        "sampled from outside every 50 ms.",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes): the same code path")
    parser.add_argument("--out", type=Path, default=Path("benchmarks") / "results" / "scale")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "brokenbind-scale",
                        help="generated data (several GB at full size), reused across runs")  # fmt: skip
    parser.add_argument("--sections", default="a,b,c,d", help="which of (a) embed, (b) train, (c) retrieval, (d) class")
    parser.add_argument("--rows", help="(b) rows per dataset, comma-separated")
    parser.add_argument("--steps", type=int, help="(b) training steps per run")
    parser.add_argument("--warmup", type=int, help="(b) steps not timed")
    parser.add_argument("--repeats", type=int, help="(a), (b), (c) runs of each case")
    parser.add_argument("--queries", type=int, help="(c) queries")
    parser.add_argument("--galleries", help="(c) gallery sizes, comma-separated")
    parser.add_argument("--class_n", type=int, help="(d) queries = gallery rows")
    parser.add_argument("--rounds", type=int, help="(d) rounds")
    parser.add_argument("--embed_rows", type=int, help="(a) image rows")
    parser.add_argument("--dim", type=int, default=128, help="(c), (d) embedding width")
    parser.add_argument(
        "--run_timeout", type=float, default=900, help="(b) seconds after which a training run counts as failed"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one retrieval measurement in this process
    parser.add_argument("--gallery", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure == "retrieval":
        print(json.dumps(measure_retrieval(args.queries, args.gallery, args.dim, args.chunk)))
        return
    sizes = dict(QUICK if args.quick else FULL)
    for key in ("steps", "warmup", "repeats", "queries", "class_n", "rounds", "embed_rows"):
        sizes[key] = getattr(args, key) if getattr(args, key) is not None else sizes[key]
    for key in ("rows", "galleries"):
        sizes[key] = [int(v) for v in getattr(args, key).split(",")] if getattr(args, key) else sizes[key]
    sections = args.sections.split(",")
    command = " ".join(["python -m benchmarks.scale", *(argv if argv is not None else sys.argv[1:])])

    def log(message: str) -> None:
        print(message, flush=True)

    start = time.perf_counter()
    rows: list[Row] = []
    parts: list[tuple[str, list[str]]] = []
    if "a" in sections:
        available = embed_available()
        embedded = bench_embed(args.work, sizes["embed_rows"], sizes["repeats"], log) if available else []
        rows += embedded
        title = f"(a) `brokenbind embed`, {sizes['embed_rows']:,} image rows"
        parts.append((title, embed_report(pd.DataFrame(embedded), available)))
    if "b" in sections:
        trained = bench_train(
            args.work, sizes["rows"], sizes["steps"], sizes["warmup"], sizes["repeats"], args.run_timeout, log
        )
        rows += trained
        parts.append(("(b) Training on float16 arrays, 1 and 2 gloo processes",
                      train_report(pd.DataFrame(trained), sizes["steps"], sizes["warmup"])))  # fmt: skip
    if "c" in sections:
        retrieved = bench_retrieval(sizes["queries"], sizes["galleries"], args.dim, sizes["repeats"], log)
        rows += retrieved
        parts.append(("(c) Exact instance mAP + R@k, chunked", retrieval_report(pd.DataFrame(retrieved), args.dim)))
    if "d" in sections:
        classed = bench_class(sizes["class_n"], args.dim, sizes["rounds"], log)
        rows += classed
        title = "(d) Class-level mAP against the matmul and instance mAP + R@k"
        parts.append((title, class_report(pd.DataFrame(classed), args.dim)))
    seconds = time.perf_counter() - start
    header = [
        "# Scale benchmarks",
        "",
        f"`{command}` (`make scale`; part of `make bench`) at commit {commit() or 'unknown'}, "
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{seconds / 60:.0f} min. Medians over repeats with their range in parentheses; the machine is shared and "
        "noisy, so read ratios and ranges, not single times. Each measurement is a row of `scale.csv`, beside.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    report = "\n".join(header + [f"\n## {title}\n\n" + "\n".join(lines) for title, lines in parts]) + "\n"
    (args.out / "scale.md").write_text(report)
    pd.DataFrame(rows).convert_dtypes().to_csv(args.out / "scale.csv", index=False)
    log(f"report: {args.out / 'scale.md'}")


if __name__ == "__main__":
    main()
