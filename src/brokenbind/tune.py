"""``brokenbind tune``: search a method's recipe (or any config value) on the VALIDATION split of your own data, with
Optuna.

    brokenbind tune --config experiments/digit_views.yaml --space experiments/tune/digit_views.yaml \\
        --method brokenbind --n_trials 30 --seeds 0,1 --objective instance

The search space is a YAML file next to the experiment: dotted config keys (any ``model.method.init_args.*``, data
or trainer argument) mapped to a range or a list of choices, plus optional defaults for the command line::

    objective: instance        # instance | class | mix (then class_weight: 0.5 → 0.5·instance + 0.5·class)
    n_trials: 30
    seeds: [0, 1]
    args: ["--trainer.max_epochs=50"]       # passed to every trial
    enqueue:                   # points evaluated first, e.g. the current default, so the study compares against it
      - {model.method.init_args.push_away: none, model.method.init_args.consistency_fraction: 0.5}
    space:
      model.method.init_args.push_away: {choices: [all, observed_pairs, none]}
      model.method.init_args.consistency_fraction: {low: 0.0, high: 0.8}
      model.method.init_args.logit_scale: {low: 5.0, high: 40.0, log: true}
      data.init_args.batch_size: {choices: [16, 32, 64]}
      model.embed_dim: {low: 64, high: 256, step: 64}          # two ints: an integer range

Every entry of the space is built as an Optuna distribution when the file is read (low < high, no ``step`` with
``log``, ...), so that a bad one stops the command before the study exists. ``--n_trials 0`` runs no trial: it
rewrites the outputs of an existing study as it stands (e.g. after cluster jobs that share it).

A study is tied to what it searches: the content of the experiment files, the method, the objective, the fixed
arguments (``args`` and the extra ones) and the space are stored in it when it is created, and a later run with
other ones is refused (its trials would not be comparable, and ``best.yaml`` would mix them); the seeds and the
number of trials may change between runs. An ``enqueue`` point is queued on every run unless the study already
evaluated it (a trial with its values COMPLETE or PRUNED) or holds it WAITING or RUNNING; a point whose trials all
FAILED is queued again. The points not queued are printed with the reason.

Each trial runs ``brokenbind fit`` in process, once per seed, with ``--test_after_fit=false`` and
``--trainer.limit_test_batches=0``: the test split is never scored. The trial's value is the mean over seeds of the
objective at the validation epoch that checkpoint selection picks (best mean instance mAP, as in ``results.csv``).
A median pruner stops unpromising trials: the first seed's run reports the best objective so far after every
validation epoch (``PruneOnValidation``, the small equivalent of Optuna's Lightning integration) and stops when Optuna
says so. Trials run in this process, so a DDP trainer over several devices or nodes is refused (``check_one_process``).

Storage is an SQLite file in the output directory by default (one machine, no server); ``--storage`` takes any
Optuna RDB URL (``postgresql://...``, ``mysql://...``), so many cluster jobs started with the same ``--study_name``
share one study. Outputs in ``--out`` (default ``tune/<experiment>``): ``best.yaml`` (a complete config: the
experiment, the method preset and the best values; ``brokenbind fit --config best.yaml``), ``trials.csv`` and
``search.png`` (objective per trial with the best so far, and the objective against each parameter).
"""

import argparse
import csv
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

from brokenbind import api
from brokenbind.errors import ConfigError
from brokenbind.settings import PRESETS, presets

if TYPE_CHECKING:
    from optuna import Study, Trial
    from optuna.distributions import BaseDistribution
    from optuna.trial import FrozenTrial


# -- the search space ------------------------------------------------------------------------------------------------
def load_space(path: Path) -> dict[str, Any]:
    """The space file's content, plus ``distributions``: its ``space`` as Optuna distributions."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(spec) - {"space", "objective", "class_weight", "n_trials", "seeds", "args", "method", "enqueue"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    space = spec.get("space") or {}
    if not space:
        raise ConfigError(f"{path}: no `space` to search")
    for key in space:
        if key.startswith("-"):
            raise ConfigError(f"{path}: space keys are dotted config keys without dashes, got {key!r}")
    spec["distributions"] = {key: distribution(path, key, entry) for key, entry in space.items()}
    for point in spec.get("enqueue") or []:
        if not isinstance(point, dict) or set(point) - set(space):
            raise ConfigError(f"{path}: enqueue entries map keys of `space` to values, got {point!r}")
    return spec


def distribution(path: Path, key: str, entry: Any) -> "BaseDistribution":
    """The Optuna distribution of the space entry ``key``: categorical for ``choices``, else a range (``log``,
    ``step``), of integers when low, high (and step) are ints. Built when the file is read, so that an entry Optuna
    refuses stops the command before the study exists, not in its first trial."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(entry, dict) or not (
        set(entry) == {"choices"} or {"low", "high"} <= set(entry) <= {"low", "high", "log", "step"}
    ):
        raise ConfigError(
            f"{path}: {key} needs `choices: [...]` or `low:` and `high:` (with optional `log:` and `step:`), "
            f"got {entry!r}"
        )
    if "choices" in entry:
        if not isinstance(entry["choices"], list) or not entry["choices"]:
            raise ConfigError(f"{path}: {key}: `choices` must be a non-empty list, got {entry['choices']!r}")
        return CategoricalDistribution(entry["choices"])
    low, high, log, step = entry["low"], entry["high"], entry.get("log", False), entry.get("step")
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            # PyYAML reads 1e-3 (no dot) as a string: the likeliest cause of a text here
            hint = "; YAML reads 1e-3 as text, write 1.0e-3" if isinstance(value, str) else ""
            raise ConfigError(f"{path}: {key}: `{name}` must be a number, got {value!r}{hint}")
    if not isinstance(log, bool):
        raise ConfigError(f"{path}: {key}: `log` must be true or false, got {log!r}")
    if not low < high:
        raise ConfigError(
            f"{path}: {key} needs low < high, got low {low}, high {high} (a single value is not searched: put it in "
            "`args` as --key=value)"
        )
    integers = isinstance(low, int) and isinstance(high, int)
    if integers and not isinstance(step, int | None):
        raise ConfigError(
            f"{path}: {key}: low and high are ints (an integer range), so `step` must be an int, got {step!r}; "
            f"for a float range write low: {float(low)}"
        )
    try:
        if integers:
            return IntDistribution(low, high, log=log, step=1 if step is None else step)
        return FloatDistribution(float(low), float(high), log=log, step=step)
    except ValueError as error:
        raise ConfigError(f"{path}: {key} {entry} is not a valid range: {error} Change this entry.") from None


def suggest(trial: "Trial", distributions: dict[str, "BaseDistribution"]) -> dict[str, Any]:
    """One value per key, from the distributions ``load_space`` built."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    values = {}
    for key, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, list(dist.choices))
        elif isinstance(dist, IntDistribution):
            values[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return values


def as_args(values: dict[str, Any]) -> list[str]:
    """``--key=value`` arguments, each value in YAML flow style with its mappings in their given order (a sorted dump
    would reorder ``data.init_args.datasets``, and the datasets' order decides how the data is split)."""
    dumped = {key: yaml.safe_dump(value, default_flow_style=True, sort_keys=False) for key, value in values.items()}
    return [f"--{key}={text.strip().removesuffix('...').strip()}" for key, text in dumped.items()]


# -- the objective ---------------------------------------------------------------------------------------------------
def score(instance: float, klass: float, objective: str, class_weight: float) -> float:
    if objective == "instance":
        return instance
    if objective == "class":
        return klass
    return (1 - class_weight) * instance + class_weight * klass


# Ours, not optuna-integration's PyTorchLightningPruningCallback (5.0, tried on a 3-epoch two_dataset fit pruned at
# epoch 1): it reports one logged metric's value of the epoch, where the trial's value is the best epoch's instance,
# class or mix objective (class mAP: a mean over the val/mAP_class/* metrics, no one metric), and it prunes by raising
# TrialPruned inside trainer.fit, which ends the run before the epoch's checkpoint and results.csv are written; this
# one stops the fit after the epoch, as any stop does.
class PruneOnValidation(Callback):
    """Reports the best objective so far to an Optuna ``trial`` after each validation epoch; when the pruner says so,
    stops the fit (``trainer.should_stop``) and sets ``pruned``."""

    def __init__(self, trial: "Trial", objective: str, class_weight: float):
        self.trial, self.objective, self.class_weight = trial, objective, class_weight
        self.best = -math.inf
        self.pruned = False

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        instance = float(metrics["val/mAP"])
        classes = [float(v) for k, v in metrics.items() if k.startswith("val/mAP_class/")]
        klass = statistics.fmean(classes) if classes else math.nan
        self.best = max(self.best, score(instance, klass, self.objective, self.class_weight))
        self.trial.report(self.best, step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


def trial_args(base: list[str], values: dict[str, Any], seed: int, out: Path, number: int) -> list[str]:
    """The ``fit`` arguments of one trial's run: the fixed ones, the trial's values, its seed, no test split."""
    return [
        *base,
        *as_args(values),
        f"--seed_everything={seed}",
        "--test_after_fit=false",
        "--trainer.limit_test_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={out / 'trials'}",
        f"--trainer.logger.init_args.version=trial{number:04d}_seed{seed}",
    ]


def first_point(space: dict[str, dict]) -> dict[str, Any]:
    """A value of every key of the space (its first choice, or the low end of its range), to check that a trial's
    configuration parses before the study starts."""
    return {key: dist["choices"][0] if "choices" in dist else dist["low"] for key, dist in space.items()}


def run_trial(
    configs: list[str],
    base: list[str],
    values: dict[str, Any],
    seed: int,
    out: Path,
    number: int,
    callbacks: Sequence[Callback] = (),
) -> tuple[float, float]:
    """One fit on the validation split, with ``callbacks`` added to the run's; (instance, class) mAP of the epoch that
    checkpoint selection picks."""
    result = api.fit(configs, trial_args(base, values, seed, out, number), callbacks)
    if result.stage("test"):
        raise RuntimeError("a tuning run scored the test split")
    rows = result.stage("val")
    return (
        statistics.fmean(r.map_instance for r in rows),
        statistics.fmean(r.map_class for r in rows),  # NaN when class mAP is missing
    )


# -- outputs ---------------------------------------------------------------------------------------------------------
def nested(values: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b.c": 1}`` → ``{"a": {"b": {"c": 1}}}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        node = out
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_one_process(config: dict[str, Any]) -> None:
    """Trials run in this process: a trainer that starts other processes (DDP over several devices or nodes) would
    have Lightning start them by running this command line again, that is, the whole study once more per rank."""
    trainer = config["trainer"]
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if "ddp" in str(trainer.get("strategy", "")) and (devices not in (1, "1", [0]) or nodes != 1):
        raise ConfigError(
            f"brokenbind tune runs its trials in this process, but the trainer is DDP over devices {devices!r} "
            f"and {nodes} node(s): Lightning would start the other ranks by running `brokenbind tune` again. Tune on "
            "one device (--hardware gpu or cpu), then train the best configuration with DDP: brokenbind fit "
            "--config OUT/best.yaml --hardware ddp"
        )


def fixed_arguments(args: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The fixed arguments as (hardware presets, ``{dotted key: value}``): what ``best.yaml`` will hold. Checked
    before the study starts, so that an argument it cannot hold fails before the first trial, not after the last."""
    hardware, values, rest = [], {}, list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--hardware" and rest:
            arg = f"--hardware={rest.pop(0)}"
        key, sep, value = arg.removeprefix("--").partition("=")
        if key == "hardware" and value in presets("hardware"):
            hardware.append(value)  # a config layer, as on the command line
        elif not arg.startswith("--") or not sep or "+" in key or key in ("hardware", "method", "config"):
            raise ConfigError(
                f"fixed arguments must read --key=value with a config key, or --hardware NAME (one of "
                f"{presets('hardware')}), got {arg!r}: best.yaml holds them. Give the method with --method and "
                "experiment files with --config; to add a callback, put it in the experiment file"
            )
        else:
            values[key] = yaml.safe_load(value)
    return hardware, values


def best_config(
    configs: list[str], method: str | None, hardware: list[str], fixed: dict[str, Any], values: dict[str, Any]
) -> dict:
    """The experiment's config files, the method preset, the fixed arguments (``fixed_arguments``) and the best
    values, merged in the order the command line applies them."""
    config: dict = {}
    layers = [Path(c) for c in configs]
    layers += [PRESETS["method"] / f"{method}.yaml"] if method else []
    for path in layers + [PRESETS["hardware"] / f"{name}.yaml" for name in hardware]:
        config = merge(config, yaml.safe_load(path.read_text()) or {})
    return merge(merge(config, nested(fixed)), nested(values))


def write_trials(path: Path, study: "Study") -> None:
    """One row per trial, with the method and objective of the study's search (``tie``) and the trial's seeds."""
    search = study.user_attrs[SEARCH]
    keys = sorted({k for t in study.trials for k in t.params})
    attrs = ["instance", "class", "seconds"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "state", "value", *attrs, "seeds", "method", "objective", *keys])
        for t in study.trials:
            writer.writerow(
                [
                    t.number,
                    t.state.name,
                    "" if t.value is None else f"{t.value:.6f}",
                    *(t.user_attrs.get(a, "") for a in attrs),
                    ",".join(str(seed) for seed in t.user_attrs.get("seeds", [])),
                    search["method"] or "(experiment config)",
                    search["objective"],
                    *(t.params.get(k, "") for k in keys),
                ]
            )


def plot(path: Path, study, objective: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.trials if t.value is not None]
    pruned = [t for t in study.trials if t.state.name == "PRUNED" and t.intermediate_values]
    keys = sorted({k for t in study.trials for k in t.params})
    cols = min(3, 1 + len(keys))
    rows = math.ceil((1 + len(keys)) / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    axes = [list(grid.flat)]
    for unused in axes[0][1 + len(keys) :]:
        unused.axis("off")
    ax = axes[0][0]
    ax.scatter([t.number for t in done], [t.value for t in done], label="complete", color="C0")
    ax.scatter(
        [t.number for t in pruned],
        [max(t.intermediate_values.values()) for t in pruned],
        marker="x",
        color="C3",
        label="pruned (best reported)",
    )
    best, line = -math.inf, []
    for t in done:
        best = max(best, t.value)
        line.append((t.number, best))
    if line:
        ax.step(*zip(*line, strict=True), where="post", color="C1", label="best so far")
    ax.set(xlabel="trial", ylabel=f"validation objective ({objective})", title="search")
    ax.legend(fontsize=7)
    for ax, key in zip(axes[0][1 : 1 + len(keys)], keys, strict=True):
        xs = [t.params[key] for t in done if key in t.params]
        ys = [t.value for t in done if key in t.params]
        ax.scatter([str(x) if isinstance(x, str | bool) else x for x in xs], ys, color="C0")
        ax.set(xlabel=key.split(".")[-1], title=key, ylabel="objective")
        ax.title.set_fontsize(7)
        if (
            study.trials
            and key in study.trials[0].distributions
            and getattr(study.trials[0].distributions[key], "log", False)
        ):
            ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the study ------------------------------------------------------------------------------------------------------
SEARCH = "brokenbind_search"  # the study's user attribute that records what it searches


def search_of(
    configs: list[str],
    method: str | None,
    objective: str,
    hardware: list[str],
    fixed: dict[str, Any],
    space: dict[str, Any],
) -> dict[str, Any]:
    """What a study searches: its trials are comparable, and ``best.yaml`` right, only under the same experiment files
    (their content), method, objective, fixed arguments (``fixed_arguments``) and space. Seeds may change."""
    search = {
        "experiment": best_config(configs, None, [], {}, {}),
        "method": method,
        "objective": objective,
        "hardware": hardware,
        "args": fixed,
        "space": space,
    }
    return json.loads(json.dumps(search))  # as the storage returns it (JSON), so that it compares equal


def differences(study: Any, now: Any, key: str = "") -> list[str]:
    """Where two searches differ, as ``dotted.key: study X, now Y``."""
    if not (isinstance(study, dict) and isinstance(now, dict)):
        return [] if study == now else [f"{key}: study {study!r}, now {now!r}"]
    out = []
    for k in [*study, *(k for k in now if k not in study)]:
        sub = f"{key}.{k}" if key else k
        if k not in now:
            out.append(f"{sub}: study {study[k]!r}, now unset")
        elif k not in study:
            out.append(f"{sub}: study unset, now {now[k]!r}")
        else:
            out += differences(study[k], now[k], sub)
    return out


def tie(study: "Study", search: dict[str, Any], storage: str) -> None:
    """Records ``search`` in a new study; refuses a study that searches something else, or one with trials and no
    record (made before brokenbind recorded it), whose trials could not be told apart."""
    stored = study.user_attrs.get(SEARCH)
    if stored is None:
        if study.trials:
            raise ConfigError(
                f"study {study.study_name!r} in {storage} holds {len(study.trials)} trials but no record of what they "
                "search (an earlier brokenbind made it), so this run's could not be told apart from them: start a new "
                "study with another --out or --study_name"
            )
        study.set_user_attr(SEARCH, search)
        stored = study.user_attrs[SEARCH]  # another job creating the same study may have recorded its own since
    if diffs := differences(stored, search):
        raise ConfigError(
            f"study {study.study_name!r} in {storage} searches something else than this command: {'; '.join(diffs)}. "
            "Its trials are not comparable with this search's and its best.yaml would mix them: give this search its "
            "own --out (or --study_name), or resume the study with the arguments, experiment and space it was made with"
        )


def matches(trial: "FrozenTrial", point: dict[str, Any]) -> bool:
    """Whether ``trial`` evaluates ``point``: the values an enqueued trial was given (Optuna's ``fixed_params``, set
    before the trial runs), or the values a trial drew, equal the point's on its keys."""
    values = trial.system_attrs.get("fixed_params", trial.params)
    return all(key in values and values[key] == value for key, value in point.items())


def enqueue(study: "Study", points: list[dict[str, Any]]) -> None:
    """Queues each point the study has not evaluated: a point with a trial COMPLETE or PRUNED (evaluated), WAITING
    (queued) or RUNNING (in another job, or left so by a killed one) is skipped with a printed reason; a point whose
    trials all FAILED, or that has none, is queued."""
    from optuna.trial import TrialState

    kept = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)
    for point in points:
        trial = next((t for t in study.get_trials(deepcopy=False, states=kept) if matches(t, point)), None)
        if trial is None:
            study.enqueue_trial(point)
        else:
            print(f"enqueue point {point}: trial {trial.number} is {trial.state.name}, not queued again")


# -- the command -----------------------------------------------------------------------------------------------------
def main(args: list[str]) -> None:
    """``brokenbind tune [options] [-- extra fit arguments]``."""
    parser = argparse.ArgumentParser(
        prog="brokenbind tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", action="append", required=True, help="experiment config (repeatable)")
    parser.add_argument("--space", type=Path, required=True, help="search space YAML")
    parser.add_argument("--method", default=None, help="method preset (configs/methods), applied after --config")
    parser.add_argument(
        "--n_trials",
        type=int,
        default=None,
        help="trials to run now (default: the space file's, else 20); 0 runs none and rewrites the outputs of the "
        "existing study as it stands",
    )
    parser.add_argument("--seeds", default=None, help="comma-separated training seeds per trial (default 0)")
    parser.add_argument("--objective", choices=["instance", "class", "mix"], default=None)
    parser.add_argument("--class_weight", type=float, default=None, help="mix: weight of class mAP (default 0.5)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default tune/<experiment>)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///<out>/study.db)")
    parser.add_argument("--study_name", default=None, help="default: the experiment name")
    parser.add_argument("--sampler_seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    args, extra = parser.parse_known_args(args)
    extra = [a for a in extra if a != "--"]
    import optuna
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    api.quiet_lightning()
    spec = load_space(args.space)
    method = args.method or spec.get("method")
    objective = args.objective or spec.get("objective", "instance")
    class_weight = args.class_weight if args.class_weight is not None else spec.get("class_weight", 0.5)
    if objective not in ("instance", "class", "mix") or not 0 <= class_weight <= 1:
        raise ConfigError(f"objective must be instance, class or mix with class_weight in [0, 1]; got {objective}")
    n_trials = args.n_trials if args.n_trials is not None else spec.get("n_trials", 20)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 0:
        raise ConfigError(
            f"n_trials (--n_trials, or n_trials in {args.space}) must be a number of trials to run, or 0 to rewrite "
            f"the outputs of the existing study without running any; got {n_trials!r}"
        )
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(spec.get("seeds", [0]))
    experiment = Path(args.config[-1]).stem
    out = args.out or Path("tune") / experiment
    fixed = [*spec.get("args", []), *extra]
    # before the study and its directory: an argument best.yaml cannot hold, or a configuration that does not parse
    # (an unknown key), stops here, with nothing written, rather than at the first trial or after the last
    hardware, fixed_values = fixed_arguments(fixed)
    base = [*([f"--method={method}"] if method else []), *fixed, f"--experiment={experiment}"]
    check_one_process(api.check(args.config, trial_args(base, first_point(spec["space"]), seeds[0], out, 0)))
    objective_name = f"{objective}{f' (class weight {float(class_weight)})' if objective == 'mix' else ''}"
    search = search_of(args.config, method, objective_name, hardware, fixed_values, spec["space"])
    study_name = args.study_name or experiment
    database = out / "study.db"
    storage = args.storage or f"sqlite:///{database.resolve()}"
    # opening a missing SQLite file creates it: look for the default one on disk first
    if n_trials == 0 and (
        (args.storage is None and not database.is_file()) or study_name not in optuna.get_all_study_names(storage)
    ):
        raise ConfigError(
            f"--n_trials 0 rewrites the outputs of an existing study, and {storage} holds no study {study_name!r}: "
            "give the --out (or --storage) and --study_name of the study, or a number of trials to run"
        )
    out.mkdir(parents=True, exist_ok=True)

    def objective_fn(trial: "Trial") -> float:
        values = suggest(trial, spec["distributions"])
        trial.set_user_attr("seeds", seeds)
        pruning = PruneOnValidation(trial, objective, class_weight)
        start, results = time.perf_counter(), []
        for i, seed in enumerate(seeds):  # the first seed's epochs are the intermediate values
            results.append(run_trial(args.config, base, values, seed, out, trial.number, [pruning] if i == 0 else []))
            if pruning.pruned:
                raise optuna.TrialPruned()
        instance = statistics.fmean(r[0] for r in results)
        klass = statistics.fmean(r[1] for r in results)
        trial.set_user_attr("instance", instance)
        trial.set_user_attr("class", klass)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        return score(instance, klass, objective, class_weight)

    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=args.sampler_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=5),
    )
    tie(study, search, storage)
    if n_trials:
        enqueue(study, spec.get("enqueue") or [])
        study.optimize(objective_fn, n_trials=n_trials)
    write_trials(out / "trials.csv", study)
    plot(out / "search.png", study, objective)
    if not any(t.value is not None for t in study.trials):
        raise SystemExit(f"no trial completed; see {out / 'trials.csv'}")
    best = study.best_trial
    config = best_config(args.config, method, hardware, fixed_values, best.params)
    header = (
        f"# brokenbind tune: best of {len(study.trials)} trials on the validation split: trial {best.number}, "
        f"objective {objective_name} = {best.value:.4f} (mean over seeds {best.user_attrs['seeds']})."
        f"\n# Run: brokenbind fit --config {out / 'best.yaml'}\n"
    )
    config = {"experiment": f"{experiment}_tuned", **config}
    (out / "best.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))
    print(f"best trial {best.number}: {objective} {best.value:.4f}  {best.params}")
    print(f"wrote {out / 'best.yaml'}, {out / 'trials.csv'}, {out / 'search.png'}; study {storage}")
    print(f"run it: brokenbind fit --config {out / 'best.yaml'}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
