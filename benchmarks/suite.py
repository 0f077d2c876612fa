"""Suites of runs (``make suite``): settings × methods × seeds × split seeds, one table with 95 % intervals.

A suite is a YAML file (``benchmarks/suites/*.yaml``)::

    stage: val                 # val: choose on validation (fit with --test_after_fit=false, test is never computed)
                               # test: fit, then test the checkpoint that validation selects, and report test
    seeds: [0, 1]              # --seed_everything
    split_seeds: [0, 1]        # --data.init_args.split_seed: which instances land in which dataset and split
    pair_seeds: false          # false: every seed with every split seed; true: zip them (seed i with split seed i)
    args: ["--trainer.max_epochs=50"]            # passed to every run
    baseline: fabind           # win / tie / loss of every method against this one
    settings:                  # name -> an experiment: a config file and/or inline config, plus arguments
      fou_pix_zer: {config: experiments/two_dataset.yaml}
      fou_pix_zer_b8: {config: experiments/two_dataset.yaml, args: ["--data.init_args.batch_size=8"]}
      fou_pix_zer_few: {config: experiments/two_dataset.yaml, methods: [fabind, brokenbind], runs: 3}
                               # methods: only these of the suite's methods; runs: the first 3 seed pairs
      inline: {experiment: {data: {class_path: datamodules.MfeatDataModule, init_args: {...}}}}
    # or settings: validation.yaml   (the settings of another suite file, relative to this one)
    x-data: &two {...}         # keys starting with x- are ignored: a place for blocks that YAML anchors reuse
    pretrain:                  # name -> a run trained once (seed 0) before the settings that name it
      mfeat_pool: {config: ../../experiments/pretrain/mfeat_pool.yaml}
      # settings write {pretrain:mfeat_pool} where the path of its best checkpoint goes (a bound backbone)
    methods:                   # name -> a preset (configs/methods) plus arguments, or a class of your own
      fabind: {preset: fabind}
      brokenbind_none: {preset: brokenbind, args: ["--model.method.init_args.push_away=none"]}
      mine: {class_path: my_methods.Mine, init_args: {margin: 0.2}}   # a BindingMethod importable from your code

Each run is one in-process ``brokenbind.api.fit(configs, overrides)`` call; the rows it returns of the suite's stage
(val: the epoch that checkpoint selection picks; test: that checkpoint on the test split) are written to
``<out>/runs.csv`` with the setting, method, split seed and what produced them: ``config_hash`` (``Suite.fingerprint``:
the run's arguments with its config files' contents, its pretraining runs, seeds and stage), ``code_hash`` and
``commit`` (``brokenbind.provenance``). A run whose rows carry both current hashes is skipped, so an interrupted suite
resumes; a run whose rows carry others (a setting's YAML or the code changed since) or none (rows written before runs
carried them) is stale: it runs again and its rows are replaced. ``<out>/summary.md`` holds mean and 95 % t-interval
of instance and class mAP per (setting, method), win / tie / loss against the baseline (the 95 % interval of the paired
difference over the same seeds and split seeds lies above 0 / contains 0 / lies below 0) and the commits that
produced the rows.

    python -m benchmarks.suite benchmarks/suites/validation.yaml --out benchmarks/results/validation
    python -m benchmarks.suite SUITE --methods fabind,brokenbind --settings fou_pix_zer   # a subset
"""

import argparse
import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import statistics
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from brokenbind import api
from brokenbind.callbacks import PivotDiagnosis, RepresentationMetrics
from brokenbind.errors import ConfigError, DivergenceError, Stopped, UserError
from brokenbind.provenance import code_hash, commit
from brokenbind.results import csv_cells, interval_text, markdown_table, metric, paired_difference, replace_csv

RUN_KEY = ["setting", "method", "seed", "split_seed"]  # one run of a suite
SCORES = ["stage", "dataset", "flow", "map_instance", "map_class", "r1", "r5", "r10", "weights"]  # from results.csv
# the pivot diagnosis at the last validation epoch (callbacks/diagnosis.py), per flow whose target is extrapolated
DIAGNOSIS = ["cos_pseudo_pivot", "cos_pseudo_target", "mAP_pivot_target", "mAP_pseudo_target"]
RUN_FIELDS = [*RUN_KEY, *SCORES, *DIAGNOSIS, "seconds", "config_hash", "code_hash", "commit"]
# the rows of a RepresentationMetrics callback (kNN, probe, zero-shot accuracies, all-pairs retrieval), when a setting
# adds it: <out>/representation.csv, replaced run by run with runs.csv
REPRESENTATION_FIELDS = [*RUN_KEY, "dataset", "metric", "modality", "value"]
REPRESENTATION_METRICS = ("knn", "probe", "zero_shot", "mAP", "mAP_class")


@dataclass
class Suite:
    settings: dict[str, dict]
    methods: dict[str, dict]
    stage: str = "val"
    seeds: list[int] = field(default_factory=lambda: [0])
    split_seeds: list[int] = field(default_factory=lambda: [0])
    pair_seeds: bool = False
    args: list[str] = field(default_factory=list)
    baseline: str | None = "fabind"
    pretrain: dict[str, dict] = field(default_factory=dict)
    root: Path = Path(".")  # config paths are relative to the working directory, or to this when not found there

    @classmethod
    def load(cls, path: Path) -> "Suite":
        spec = yaml.safe_load(Path(path).read_text()) or {}
        spec = {k: v for k, v in spec.items() if not k.startswith("x-")}  # x-*: blocks that YAML anchors share
        unknown = set(spec) - {
            "settings",
            "methods",
            "stage",
            "seeds",
            "split_seeds",
            "pair_seeds",
            "args",
            "baseline",
            "pretrain",
        }
        if unknown:
            raise ConfigError(f"{path}: unknown suite keys {sorted(unknown)}")
        if spec.get("stage", "val") not in ("val", "test"):
            raise ConfigError(f"{path}: stage must be val or test, got {spec.get('stage')!r}")
        if isinstance(spec.get("settings"), str):  # the settings of another suite file: one definition for both stages
            borrowed = cls.load(Path(path).resolve().parent / spec["settings"]).settings
            ours, spec["settings"] = set(spec.get("methods") or {}), {}
            for name, setting in borrowed.items():
                if "methods" in setting:  # names the other suite's methods: keep those this suite defines, if any
                    kept = [m for m in setting["methods"] if m in ours]
                    if not kept:
                        continue
                    setting = {**setting, "methods": kept}
                spec["settings"][name] = setting
        if not spec.get("settings") or not spec.get("methods"):
            raise ConfigError(f"{path}: a suite needs settings and methods")
        for kind in ("settings", "methods"):
            for name, value in spec[kind].items():
                if not isinstance(value, dict):
                    raise ConfigError(f"{path}: {kind[:-1]} {name!r} must be a mapping")
        for name, method in spec["methods"].items():
            unknown = set(method) - {"preset", "args", "class_path", "init_args"}
            both = "preset" in method and "class_path" in method
            if unknown or both or ("init_args" in method and "class_path" not in method):
                raise ConfigError(
                    f"{path}: method {name!r}: a method is a preset ({{preset: fabind}}) or a class of your own "
                    "({class_path: my_methods.Mine, init_args: {...}}), each with optional args; got keys "
                    f"{sorted(method)}"
                )
        for name, setting in spec["settings"].items():
            unknown = set(setting) - {"config", "experiment", "args", "methods", "runs"}
            missing = set(setting.get("methods", [])) - set(spec["methods"])
            if unknown or missing:
                raise ConfigError(
                    f"{path}: setting {name!r}: unknown keys {sorted(unknown)} or methods {sorted(missing)}"
                )
        if spec.get("pair_seeds") and len(spec.get("seeds", [0])) != len(spec.get("split_seeds", [0])):
            raise ConfigError(f"{path}: pair_seeds needs as many seeds as split_seeds")
        return cls(**spec, root=Path(path).resolve().parent)

    def select(self, settings: list[str] | None, methods: list[str] | None) -> "Suite":
        for kind, chosen, have in (("setting", settings, self.settings), ("method", methods, self.methods)):
            missing = set(chosen or []) - set(have)
            if missing:
                raise ConfigError(f"unknown {kind}s {sorted(missing)}; the suite has {sorted(have)}")
        return replace(
            self,
            settings={k: v for k, v in self.settings.items() if not settings or k in settings},
            methods={k: v for k, v in self.methods.items() if not methods or k in methods},
        )

    def seed_pairs(self) -> list[tuple[int, int]]:
        """(seed, split seed) of every run of one setting and method."""
        if self.pair_seeds:
            return list(zip(self.seeds, self.split_seeds, strict=True))
        return [(seed, split_seed) for split_seed in self.split_seeds for seed in self.seeds]

    def runs(self) -> list[tuple[str, str, int, int]]:
        """Setting-major order, so that a subset of settings finishes early with every method. A setting may narrow
        the suite: ``methods`` (a list of the suite's method names) and ``runs`` (the first N seed pairs)."""
        out = []
        for setting, spec in self.settings.items():
            pairs = self.seed_pairs()[: spec.get("runs")]
            out += [(setting, m, seed, ss) for m in self.methods if m in spec.get("methods", self.methods)
                    for seed, ss in pairs]  # fmt: skip
        return out

    def _path(self, name: str) -> str:
        path = Path(name)
        return str(path if path.exists() or path.is_absolute() else self.root / path)

    def configs(self, name: str, spec: dict, save_dir: Path) -> list[str]:
        """The config files of a setting or pretraining run: its files, then its inline experiment."""
        configs = [
            self._path(c) for c in ([spec["config"]] if isinstance(spec.get("config"), str) else spec.get("config", []))
        ]
        if "experiment" in spec:  # an inline experiment config, written next to the runs
            inline, text = save_dir / "configs" / f"{name}.yaml", yaml.safe_dump(spec["experiment"], sort_keys=False)
            if not inline.exists() or inline.read_text() != text:  # atomic: runs in other processes may read it
                inline.parent.mkdir(parents=True, exist_ok=True)
                partial = inline.with_suffix(f".{os.getpid()}.tmp")
                partial.write_text(text)
                partial.replace(inline)
            configs.append(str(inline))
        if not configs:
            raise ConfigError(f"{name!r} names no config and no inline experiment")
        return configs

    def pretrained(self, setting: str) -> list[str]:
        """The pretraining runs a setting names (``{pretrain:NAME}`` anywhere in its spec)."""
        text = yaml.safe_dump(self.settings[setting])
        unknown = set(re.findall(r"\{pretrain:([^}]+)\}", text)) - set(self.pretrain)
        if unknown:
            raise ConfigError(f"setting {setting!r} names pretraining runs {sorted(unknown)} the suite does not define")
        return [name for name in self.pretrain if f"{{pretrain:{name}}}" in text]

    def _with_contents(self, spec: dict) -> dict:
        """A setting's or pretraining run's spec with its config files replaced by their parsed contents."""
        configs = [spec["config"]] if isinstance(spec.get("config"), str) else spec.get("config", [])
        return {**spec, "config": [yaml.safe_load(Path(self._path(c)).read_text()) for c in configs]}

    def fingerprint(self, setting: str, method: str, seed: int, split_seed: int) -> str:
        """A hash of what a run's result depends on besides the code: the setting (its config files by content, so a
        changed YAML changes it and a moved checkout does not), the method, the suite's arguments, the pretraining runs
        the setting uses, the seeds and the stage. Files that a config file names (data, checkpoints) are not read."""
        what = {
            "setting": self._with_contents(self.settings[setting]),
            "method": self.methods[method],
            "method_source": method_source(self.methods[method]),
            "args": self.args,
            "stage": self.stage,
            "seed": seed,
            "split_seed": split_seed,
            "pretrain": {name: self._with_contents(self.pretrain[name]) for name in self.pretrained(setting)},
        }
        return digest(what)

    def pretrain_fingerprint(self, name: str) -> str:
        """What a pretraining run's checkpoint depends on: its spec (config files by content) and the code."""
        return f"{digest(self._with_contents(self.pretrain[name]))} {code_hash()}"

    def pretrain_run(self, name: str, save_dir: Path) -> tuple[list[str], list[str]]:
        """(config files, overrides) of a pretraining run."""
        spec = self.pretrain[name]
        return self.configs(f"pretrain_{name}", spec, save_dir), [
            *spec.get("args", []),
            f"--experiment={name}",
            "--seed_everything=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={save_dir / 'pretrain'}",
            "--test_after_fit=false",
        ]

    @staticmethod
    def run_root(save_dir: Path, method: str, seed: int, split_seed: int) -> Path:
        """Where one run's directories go (``<setting>/<method>/version_0`` below it)."""
        return save_dir / "runs" / method / f"seed{seed}_split{split_seed}"

    def run_args(
        self, setting: str, method: str, seed: int, split_seed: int, save_dir: Path
    ) -> tuple[list[str], list[str]]:
        """(config files, overrides) of one run for ``brokenbind.api.fit``; the experiment is named after the
        setting."""
        s, m = self.settings[setting], self.methods[method]
        for name in self.pretrained(setting):  # the checkpoint path goes where the setting names it
            s = yaml.safe_load(
                yaml.safe_dump(s).replace(f"{{pretrain:{name}}}", str(pretrained_checkpoint(save_dir, name)))
            )
        # the method's preset after the suite's and the setting's arguments: what a preset fixes (frozen's
        # max_epochs 0, oracle's data) wins over suite-wide settings; the method's own args come last
        args = [*self.args, *flat(s.get("args", []))]
        if m.get("preset"):
            args += ["--method", m["preset"]]
        if m.get("class_path"):  # the user's BindingMethod, as --model.method would name it on the command line
            args.append(
                f"--model.method={json.dumps({'class_path': m['class_path'], 'init_args': m.get('init_args', {})})}"
            )
        args += [
            *m.get("args", []),
            f"--experiment={setting}",
            f"--seed_everything={seed}",
            f"--data.init_args.split_seed={split_seed}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            # a directory of its own per run: parallel runs never race for a version number
            f"--trainer.logger.init_args.save_dir={self.run_root(save_dir, method, seed, split_seed)}",
            f"--test_after_fit={'true' if self.stage == 'test' else 'false'}",
        ]
        return self.configs(setting, s, save_dir), args


def method_source(method: dict) -> str | None:
    """The source text of a user's method module (a changed file makes its runs stale; brokenbind's own code is in
    ``code_hash``), None for a preset. A module that cannot be imported is named here, before any run starts."""
    if not method.get("class_path"):
        return None
    module, _, name = method["class_path"].rpartition(".")
    try:
        spec = importlib.util.find_spec(module) if module else None
    except ImportError:
        spec = None
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"method class_path {method['class_path']!r}: module {module!r} is not importable; put its directory on "
            "PYTHONPATH (or run from it) so that `import " + (module or name) + "` works"
        )
    return Path(spec.origin).read_text() if spec.origin.endswith(".py") else spec.origin


def digest(what: object) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def flat(args: list) -> list[str]:
    """Arguments with nested lists spliced in: a YAML anchor of several arguments used beside others."""
    return [a for arg in args for a in (flat(arg) if isinstance(arg, list) else [str(arg)])]


def pretrained_checkpoint(out: Path, name: str) -> Path:
    return (out / "pretrain" / f"{name}.ckpt").resolve()


def run_pretraining(suite: Suite, out: Path, settings: list[str], log=print) -> None:
    """Train each pretraining run these settings name, once: its best checkpoint is kept as
    ``out/pretrain/<name>.ckpt`` and reused by every later run and every resumed suite while
    ``<name>.fingerprint`` (``Suite.pretrain_fingerprint``) is current; a changed spec or code trains it again."""
    for name in dict.fromkeys(n for setting in settings for n in suite.pretrained(setting)):
        target, fingerprint = pretrained_checkpoint(out, name), suite.pretrain_fingerprint(name)
        stamp = target.with_suffix(".fingerprint")
        if target.exists() and stamp.is_file() and stamp.read_text() == fingerprint:
            continue
        start = time.perf_counter()
        best = api.fit(*suite.pretrain_run(name, out)).best_checkpoint
        if best is None:
            raise RuntimeError(f"pretraining run {name!r} saved no checkpoint")
        shutil.copyfile(best, target)
        stamp.write_text(fingerprint)
        log(f"pretrained {name}: {target} ({time.perf_counter() - start:.0f} s)")


Rows = list[dict[str, str]]


def run_one(configs: list[str], overrides: list[str], stage: str) -> tuple[Rows, Rows]:
    """One in-process fit; its rows of ``stage`` as ``runs.csv`` cells (as its ``results.csv`` has them), with the
    pivot diagnosis of the row's flow at the last validation epoch (empty where nothing was extrapolated); and its
    representation metrics of ``stage`` (none unless the setting adds the ``RepresentationMetrics`` callback)."""
    with contextlib.redirect_stdout(io.StringIO()):  # its tables: the suite logs one line a run, results.csv has them
        result = api.fit(configs, overrides)
    history = next((c.history for c in result.trainer.callbacks if isinstance(c, PivotDiagnosis)), {})
    rows = []
    for row in result.stage(stage):
        parts = row.flow.split("->")  # query->pivot->target, or query->target
        last = {name: history.get(f"{row.dataset}/{parts[0]}->{parts[-1]}/{name}") for name in DIAGNOSIS}
        diagnosis = {name: f"{points[-1][1]:.4f}" if points else "" for name, points in last.items()}
        rows.append({k: str(v) for k, v in csv_cells(row).items()} | diagnosis)
    if not rows:
        raise RuntimeError(f"run scored no {stage} rows: {configs} {overrides}")
    measured = next((c.rows for c in result.trainer.callbacks if isinstance(c, RepresentationMetrics)), [])
    representation = [
        {
            "dataset": r.dataset,
            "metric": r.metric,
            "modality": r.modality,
            "value": "" if math.isnan(r.value) else str(r.value),
        }
        for r in measured
        if r.stage == stage
    ]
    return rows, representation


def load_runs(path: Path) -> list[dict[str, str]]:
    """The rows of a ``runs.csv``; columns it lacks (a file written before they existed) read as ''."""
    if not path.exists():
        return []
    with path.open() as f:
        return [{field: "" for field in RUN_FIELDS} | row for row in csv.DictReader(f)]


def run_key(run: dict[str, str] | tuple) -> tuple[str, ...]:
    """(setting, method, seed, split seed) as text, of a ``runs.csv`` row or a ``Suite.runs()`` entry."""
    return tuple(run[k] for k in RUN_KEY) if isinstance(run, dict) else tuple(map(str, run))


def write_runs(path: Path, rows: list[dict[str, str]]) -> None:
    replace_csv(path, RUN_FIELDS, rows)


def stale_runs(suite: Suite, rows: list[dict[str, str]]) -> tuple[list[tuple[str, str, int, int]], Counter]:
    """The suite's runs to run (no rows, or rows of another configuration or code) and why those with rows are stale."""
    found: dict[tuple[str, ...], set[tuple[str, str]]] = defaultdict(set)
    for row in rows:
        found[run_key(row)].add((row["config_hash"], row["code_hash"]))
    todo, why = [], Counter()
    for run in suite.runs():
        current = (suite.fingerprint(*run), code_hash())
        hashes = found.get(run_key(run))
        if hashes == {current}:
            continue
        todo.append(run)
        if hashes:
            configs = {config for config, _ in hashes}
            why["written without a fingerprint" if "" in configs else "of another configuration"
                if configs != {current[0]} else "of other code"] += 1  # fmt: skip
    return todo, why


def describe_stale(why: Counter) -> str:
    return f"{why.total()} of them stale (" + ", ".join(f"{count} {reason}" for reason, count in why.items()) + ")"


def provenance(rows: list[dict[str, str]]) -> str:
    """One line: the code that produced the rows, counted in runs (a commit, or the code hash outside git)."""
    runs = {run_key(r): r for r in rows}
    counts = Counter(
        f"commit {r['commit']}" if r["commit"] else f"code {r['code_hash']} (no git)" if r["code_hash"] else
        "unrecorded code (rows written before runs.csv recorded it)"
        for r in runs.values()
    )  # fmt: skip
    return "Runs by the code that produced them: " + ", ".join(f"{c}: {n}" for c, n in counts.most_common()) + "."


def _timed_run(configs: list[str], overrides: list[str], stage: str, threads: int) -> tuple[Rows, Rows, float]:
    """One run in a worker process (``--jobs``): its own torch thread count, quiet Lightning."""
    import torch

    torch.set_num_threads(threads)
    api.quiet_lightning()
    start = time.perf_counter()
    try:
        rows, representation = run_one(configs, overrides, stage)
    except (UserError, DivergenceError, Stopped) as error:  # re-raised in the suite's process: say which run
        raise RuntimeError(f"run failed: {type(error).__name__}: {error} ({configs} {overrides})") from None
    return rows, representation, time.perf_counter() - start


def run_suite(suite: Suite, out: Path, log=print, jobs: int = 1, threads: int = 1) -> list[dict[str, str]]:
    """Every run without current rows in ``out/runs.csv`` (``stale_runs``), ``jobs`` at a time (each in its own
    process with ``threads`` torch threads; one job runs in this process); returns all rows of the suite. A run's rows
    replace its old ones as it finishes."""
    out.mkdir(parents=True, exist_ok=True)
    runs_csv = out / "runs.csv"
    todo, stale = stale_runs(suite, load_runs(runs_csv))
    n = len(suite.runs())
    log(
        f"suite: {n} runs, {len(todo)} to run, {n - len(todo)} current in {runs_csv}"
        + (f"; {describe_stale(stale)}, their rows replaced when they finish" if stale else "")
    )
    run_pretraining(suite, out, list(dict.fromkeys(run[0] for run in todo)), log)

    def record(i: int, run: tuple[str, str, int, int], rows: Rows, representation: Rows, seconds: float) -> None:
        setting, method, seed, split_seed = run
        key = dict(zip(RUN_KEY, run_key(run), strict=True))
        kept = [r for r in load_representation(out) if run_key(r) != run_key(run)]
        if representation or len(kept) < len(load_representation(out)):
            replace_csv(out / "representation.csv", REPRESENTATION_FIELDS, kept + [key | r for r in representation])
        produced = {"config_hash": suite.fingerprint(*run), "code_hash": code_hash(), "commit": commit()}
        new = [{**dict(zip(RUN_KEY, run_key(run), strict=True)), **{k: r[k] for k in SCORES + DIAGNOSIS},
                "seconds": f"{seconds:.1f}", **produced} for r in rows]  # fmt: skip
        write_runs(runs_csv, [r for r in load_runs(runs_csv) if run_key(r) != run_key(run)] + new)
        inst = statistics.fmean(metric(r["map_instance"]) for r in rows)
        klass = statistics.fmean(metric(r["map_class"]) for r in rows)
        log(
            f"[{i}/{len(todo)}] {setting} {method} seed {seed} split {split_seed}: {inst:.3f} / {klass:.3f} "
            f"({seconds:.0f} s)"
        )

    if jobs <= 1:
        for i, run in enumerate(todo, 1):
            start = time.perf_counter()
            record(i, run, *run_one(*suite.run_args(*run, out), suite.stage), time.perf_counter() - start)
    else:
        # spawn: a fresh interpreter per worker (no forked Lightning/torch state). No max_tasks_per_child: Python 3.11's
        # executor stops when its workers retire with work still queued.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = {pool.submit(_timed_run, *suite.run_args(*run, out), suite.stage, threads): run for run in todo}
            for i, future in enumerate(as_completed(futures), 1):
                record(i, futures[future], *future.result())
    return suite_rows(suite, runs_csv)


def load_representation(out: Path) -> Rows:
    """The rows of ``out/representation.csv`` (none when no run measured representations)."""
    path = out / "representation.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def suite_rows(suite: Suite, runs_csv: Path) -> list[dict[str, str]]:
    """The rows of ``runs_csv`` that belong to the suite's runs (a subset of settings or methods, other seeds)."""
    wanted = {run_key(r) for r in suite.runs()}
    return [r for r in load_runs(runs_csv) if run_key(r) in wanted]


# -- statistics ------------------------------------------------------------------------------------------------------
def per_run(rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[tuple[str, str], tuple[float, float]]]:
    """(setting, method) -> (seed, split_seed) -> (instance, class) mAP, averaged over the run's flows."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["setting"], r["method"], r["seed"], r["split_seed"])].append(r)
    out: dict[tuple[str, str], dict] = defaultdict(dict)
    for (setting, method, seed, split_seed), group in groups.items():
        out[setting, method][seed, split_seed] = (
            statistics.fmean(metric(r["map_instance"]) for r in group),
            statistics.fmean(metric(r["map_class"]) for r in group),
        )
    return out


def summarise(rows: list[dict[str, str]], baseline: str | None = "fabind") -> str:
    """Markdown: a line per (setting, method) with mean ± 95 % half-width, W/T/L against the baseline, and a
    last block with each method's mean over settings and its win / tie / loss counts."""
    runs = per_run(rows)
    stage = rows[0]["stage"] if rows else "?"
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    body: list[list[str]] = []
    tally: dict[str, list[str]] = defaultdict(list)
    means: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for setting in settings:
        for method in methods:
            got = runs.get((setting, method))
            if not got:
                continue
            inst, klass = [v[0] for v in got.values()], [v[1] for v in got.values()]
            means[method].append((statistics.fmean(inst), statistics.fmean(klass)))
            versus = ""
            if baseline and method != baseline and (setting, baseline) in runs:
                base = runs[setting, baseline]
                versus = f"{paired_difference(got, base, 0)[2]} / {paired_difference(got, base, 1)[2]}"
                tally[method].append(versus)
            body.append([setting, method, str(len(got)), interval_text(inst), interval_text(klass), versus])
    header = ["setting", "method", "runs", f"{stage} instance mAP", f"{stage} class mAP",
              f"vs {baseline} (inst / class)"]  # fmt: skip
    lines = [*markdown_table(header, body), ""]
    body = []
    for method in methods:
        inst = statistics.fmean(v[0] for v in means[method])
        klass = statistics.fmean(v[1] for v in means[method])
        counts = ["/".join(str(sum(v.split(" / ")[i] == c for v in tally[method])) for c in "WTL") for i in (0, 1)]
        if method == baseline or not tally[method]:
            counts = ["-", "-"]
        body.append([method, str(len(means[method])), f"{inst:.3f}", f"{klass:.3f}", *counts])
    header = ["method", "settings", f"mean {stage} instance mAP", f"mean {stage} class mAP", "W/T/L instance",
              "W/T/L class"]  # fmt: skip
    return "\n".join([*lines, *markdown_table(header, body)]) + "\n"


def summarise_representation(rows: Rows, baseline: str | None = "fabind") -> str:
    """Markdown: per (setting, method) each representation metric averaged over the run's modalities (or modality
    pairs), mean ± 95 % half-width over runs and W/T/L against the baseline; then the instance mAP of every ordered
    pair, a column per method. Empty without rows."""
    if not rows:
        return ""
    runs: dict[tuple[str, str], dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    values: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r["value"]:
            values[r["setting"], r["method"], r["seed"], r["split_seed"], r["metric"]].append(float(r["value"]))
    for (setting, method, seed, split_seed, name), got in values.items():
        runs[setting, method][seed, split_seed].append((name, statistics.fmean(got)))
    per_run_metrics = {
        key: {run: tuple(dict(pairs).get(m, math.nan) for m in REPRESENTATION_METRICS) for run, pairs in got.items()}
        for key, got in runs.items()
    }
    body = []
    for (setting, method), got in per_run_metrics.items():
        cells = []
        for i in range(len(REPRESENTATION_METRICS)):
            text = interval_text([v[i] for v in got.values() if not math.isnan(v[i])], 100, 1)
            if baseline and method != baseline and (setting, baseline) in per_run_metrics:
                text += f" ({paired_difference(got, per_run_metrics[setting, baseline], i)[2]})"
            cells.append(text)
        body.append([setting, method, str(len(got)), *cells])
    header = ["setting", "method", "runs", "kNN acc %", "probe acc %", "zero-shot acc %", "pairs instance mAP %",
              "pairs class mAP %"]  # fmt: skip
    lines = [f"Representation metrics (mean over modalities or ordered pairs; W/T/L vs {baseline}):", "",
             *markdown_table(header, body), ""]  # fmt: skip
    pairs: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["metric"] == "mAP" and r["value"]:
            pairs[r["setting"], r["dataset"], r["modality"]][r["method"]].append(float(r["value"]))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    body = [[s, d, pair, *(interval_text(got.get(m, []), 100, 1) or "-" for m in methods)]
            for (s, d, pair), got in pairs.items()]  # fmt: skip
    lines += ["Instance mAP % of every ordered pair (query->target):", "",
              *markdown_table(["setting", "dataset", "pair", *methods], body)]  # fmt: skip
    return "\n".join(lines) + "\n"


def method_anchors(suite: Suite) -> dict[str, str]:
    """Method name -> the fixed anchor modality of each fabind method whose arguments set one
    (``--model.method.init_args.anchor=M``; other methods' ``anchor`` means something else)."""
    anchors = {}
    for name, spec in suite.methods.items():
        for arg in spec.get("args", []) if spec.get("preset") == "fabind" else []:
            if (found := re.fullmatch(r"--model\.method\.init_args\.anchor=(\S+)", str(arg))) is not None:
                anchors[name] = found[1]
    return anchors


def non_anchor_pairs(rows: Rows, anchors: dict[str, str], baseline: str) -> str:
    """Markdown: each fixed-anchor method against the baseline on the ordered pairs that do not contain its anchor
    (what a fixed anchor binds only through itself): mean instance and class mAP over those pairs per run, the paired
    difference (method − baseline, 95 % half-width) and W/T/L. Empty without such methods."""
    per: dict[tuple[str, str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["metric"] in ("mAP", "mAP_class") and r["value"]:
            per[r["setting"], r["method"], r["seed"], r["split_seed"]][r["metric"], r["modality"]].append(
                float(r["value"])
            )
    body = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        for method, anchor in anchors.items():
            runs = {k[2:]: v for k, v in per.items() if k[:2] == (setting, method)}
            base = {k[2:]: v for k, v in per.items() if k[:2] == (setting, baseline)}
            if not runs or not base:
                continue

            got = {run: _pairs_without(v, anchor) for run, v in runs.items()}
            ref = {run: _pairs_without(v, anchor) for run, v in base.items()}
            cells = []
            for i in (0, 1):
                diff, half, verdict = paired_difference(got, ref, i)
                cells += [
                    interval_text([v[i] for v in got.values()], 100, 1),
                    f"{100 * diff:+.1f} ± {100 * half:.1f} ({verdict})",
                ]
            body.append([setting, method, anchor, str(len(got)), *cells])
    if not body:
        return ""
    header = ["setting", "method", "anchor", "runs", "non-anchor pairs instance mAP %", f"− {baseline}",
              "non-anchor pairs class mAP %", f"− {baseline}"]  # fmt: skip
    return "\n".join([f"Fixed anchors on the pairs without their anchor, against {baseline} on the same pairs:", "",
                      *markdown_table(header, body)]) + "\n"  # fmt: skip


def _pairs_without(values: dict[tuple[str, str], list[float]], anchor: str) -> tuple[float, float]:
    """(instance, class) mAP of one run averaged over the ordered pairs (``(metric, "q->t")`` keys) without
    ``anchor``."""
    return tuple(
        statistics.fmean(
            statistics.fmean(v) for (m, pair), v in values.items() if m == name and anchor not in pair.split("->")
        )
        for name in ("mAP", "mAP_class")
    )


def pivot(rows: list[dict[str, str]]) -> str:
    """Markdown: a row per setting, a column per method, cells ``instance / class`` (mean ± 95 % half-width)."""
    runs = per_run(rows)
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))

    def cell(setting: str, method: str) -> str:
        got = runs.get((setting, method))
        if not got:
            return "not run"
        return " / ".join(interval_text([v[i] for v in got.values()]) for i in (0, 1))

    body = [[s, *(cell(s, m) for m in methods)] for s in settings]
    return "\n".join(markdown_table(["setting", *methods], body)) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<suite name>")
    parser.add_argument("--settings", default=None, help="comma-separated subset of the suite's settings")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the suite's methods")
    parser.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the suite's)")
    parser.add_argument("--split_seeds", default=None, help="comma-separated split seeds (default: the suite's)")
    parser.add_argument("--pair_seeds", action="store_true", help="zip seeds with split seeds instead of crossing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    parser.add_argument("--summary_only", action="store_true", help="summarise runs.csv without running anything")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    api.quiet_lightning()
    suite = Suite.load(args.suite)
    suite = suite.select(
        args.settings.split(",") if args.settings else None, args.methods.split(",") if args.methods else None
    )
    if args.seeds:
        suite.seeds = [int(v) for v in args.seeds.split(",")]
    if args.split_seeds:
        suite.split_seeds = [int(v) for v in args.split_seeds.split(",")]
    suite.pair_seeds = suite.pair_seeds or args.pair_seeds
    out = args.out or Path("benchmarks/results") / args.suite.stem
    if args.summary_only:
        rows = suite_rows(suite, out / "runs.csv")
        stale = stale_runs(suite, rows)[1]
        if stale:
            print(f"summary of {out / 'runs.csv'} as it is: of its runs, {describe_stale(stale)}", flush=True)
    else:
        rows = run_suite(suite, out, log=lambda msg: print(msg, flush=True), jobs=args.jobs, threads=args.threads)
    if not rows:
        raise SystemExit(f"no runs in {out / 'runs.csv'}")
    wanted = {run_key(r) for r in suite.runs()}
    representation = [r for r in load_representation(out) if run_key(r) in wanted]
    summary = "\n".join(
        [
            summarise(rows, suite.baseline),
            pivot(rows),
            summarise_representation(representation, suite.baseline),
            non_anchor_pairs(representation, method_anchors(suite), suite.baseline),
        ]
    )
    summary += "\n" + provenance(rows) + "\n"
    (out / "summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
