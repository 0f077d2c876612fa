"""``brokenbind embed``: encode every row of an experiment's datasets once with its frozen backbones, into the
``.npy`` arrays that ``data.init_args.arrays`` reads, so that training runs on features instead of raw inputs.
This is the practice of the binding papers, whose encoders are frozen (BrokenBind arXiv 2602.06451 §5, ImageBind
arXiv 2305.05665 §4): encode once, train heads many times.

A Lightning predict run over the experiment's datamodule (manifests, shards, the built-in digits): ``--hardware ddp``
splits the rows over devices and nodes. What it writes into OUT::

    embed.yaml                    the experiment files OUT belongs to, the command that (re)writes it; per dataset
                                  and modality: backbone spec and fingerprint, data fingerprint, rows, width, dtype,
                                  complete or not (a fit refuses an incomplete array; a mismatched reuse is refused)
    arrays.yaml                   a config layer: ``brokenbind fit --config E.yaml --config OUT/arrays.yaml``
    <dataset>/manifest.csv        id, label, split of every row (the datamodule's own split, so training on the
                                  arrays scores the same rows) and the cells of the modalities not encoded
    <dataset>/<modality>.npy      (rows holding the modality, D) float32 or float16, in manifest order
    <dataset>/<modality>_ids.txt  the id of each array row (the manifest's ``id``; its row number where it has none)
    <dataset>/<modality>.todo.npy while incomplete: the array rows still to encode (a stopped run continues there)

A modality is encoded when its backbone is a fixed function (frozen, no LoRA, a fingerprint) and its kind is image,
audio or text; features modalities are features already. The others keep their backbone and their manifest column.

OUT is new, empty, or an embed output of the same experiment files (which continues); anything else is refused before
a file is written. SIGTERM stops after the batch being written, Ctrl-C at once; both exit 128 + the signal number, and
the same command continues.
"""

import hashlib
import os
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import yaml
from jsonargparse import Namespace
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from brokenbind.api import fresh_process_state, user_errors
from brokenbind.backbones import Backbone, BackboneSpec, build_backbone
from brokenbind.errors import SIGNAL_EXIT, ConfigError, Stopped
from brokenbind.module import BindingModule, silence_known_warnings
from brokenbind.settings import (
    DEFAULTS,
    PRESETS,
    Config,
    Overrides,
    add_run_arguments,
    check_accelerator,
    config_args,
    expand_presets,
    experiment_files,
    experiment_name,
    new_parser,
    override_args,
)
from datamodules.arrays import EMBED_RECORD
from datamodules.base import SPLITS
from datamodules.manifest import ManifestDataModule, ManifestDataset

ENCODED_KINDS = ("image", "audio", "text")
Dtype = Literal["float32", "float16"]
Target = tuple[str, str]  # (dataset, modality)


@dataclass(frozen=True)
class Embedded:
    """What ``embed`` left in ``out``: the arrays (dataset → modality → (array, ids file)), the config layer that
    trains on them, and whether every row is encoded (False after a stop: run the same command again)."""

    out: Path
    arrays: dict[str, dict[str, tuple[Path, Path]]]
    config_layer: Path
    fit_command: str  # trains the experiment on the arrays
    complete: bool
    rows_encoded: int  # by this call (rows already there from an earlier call are not counted)


# -- what to encode ----------------------------------------------------------------------------------------------------
def encodable(backbone: Backbone) -> str | None:
    """Why ``backbone``'s features cannot be stored once, or None when they can (a fixed, named function)."""
    if backbone.trainable or backbone.lora:
        return "its backbone trains (or carries LoRA adapters): its features change in training"
    if backbone.fingerprint() is None:
        return "its backbone names no fixed function (no fingerprint: e.g. randomly initialised)"
    return None


def choose(
    source: ManifestDataModule, model: BindingModule, asked: list[str] | None
) -> tuple[dict[str, Backbone], dict[str, str]]:
    """(modality → its built backbone, for the modalities to encode; modality → why it is not encoded). By default
    every image, audio and text modality whose backbone is a fixed function; ``asked`` names them explicitly, and one
    that does not qualify is refused."""
    used = sorted({m for name in source.datasets for m in source.needed_modalities(name)})
    unknown = sorted(set(asked or []) - set(used))
    if unknown:
        raise ConfigError(f"--modalities: no dataset uses {unknown}; the datasets use {used}")
    info = source.modality_info()
    chosen: dict[str, Backbone] = {}
    skipped: dict[str, str] = {}
    for m in asked or used:
        kind = source.modalities[m]
        if kind not in ENCODED_KINDS:
            skipped[m] = f"a {kind} modality is features already"
            continue
        backbone = build_backbone(spec_of(model, m), replace(info[m], name=m))
        why = encodable(backbone)
        if why is None:
            chosen[m] = backbone
        else:
            skipped[m] = why
    if asked and skipped:
        m, why = next(iter(skipped.items()))
        raise ConfigError(f"--modalities: {m!r} cannot be encoded once: {why}")
    if not chosen:
        raise ConfigError(f"nothing to encode: {'; '.join(f'{m}: {why}' for m, why in skipped.items())}")
    return chosen, skipped


def check_raw_files(source: ManifestDataModule, targets: list[Target]) -> None:
    """The modalities left raw are named in OUT's manifests by their files: a tar member cannot be."""
    for dataset, table in source.tables().items():
        for m, paths in table.paths.items():
            if (dataset, m) not in targets and any(p is not None and not isinstance(p, Path) for p in paths):
                raise ConfigError(
                    f"dataset {dataset!r}: modality {m!r} is read from shards and is not encoded, and a manifest "
                    "cannot name a tar member; encode it too (a frozen backbone) or keep training on the shards"
                )


def spec_of(model: BindingModule, modality: str) -> BackboneSpec:
    return model.backbone_names.get(modality, model.default_backbone)


def array_rows(source: ManifestDataModule, dataset: str, modality: str) -> np.ndarray:
    """The manifest rows of ``dataset`` that hold ``modality`` (a file, or a non-empty text cell)."""
    table = source.tables()[dataset]
    if modality in table.paths:
        return np.array([row for row, path in enumerate(table.paths[modality]) if path is not None], dtype=np.int64)
    return np.flatnonzero(table.manifest.stripped(modality).ne("").to_numpy())


def row_ids(source: ManifestDataModule, dataset: str) -> list[str]:
    """Each row's manifest ``id``; its row number where the manifest has no id column."""
    manifest = source.tables()[dataset].manifest
    if "id" in manifest.columns:
        return manifest.stripped("id").tolist()
    return [str(row) for row in range(len(manifest))]


def data_fingerprint(source: ManifestDataModule, dataset: str, modality: str) -> str:
    """The inputs of one modality of one dataset, over every split (the datamodule's own fingerprints)."""
    parts = [source.fingerprint(dataset, split, [modality]) for split in SPLITS]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


# -- the output directory ----------------------------------------------------------------------------------------------
def experiment_of(args: Sequence[str]) -> list[str]:
    """What an embed output belongs to: the ``--config`` layers of ``args`` (presets expanded) in order, a file by its
    resolved path, an inline configuration by a digest of its text; not the presets (a run may continue on other
    ``--hardware``)."""
    layers = []
    for flag, arg in zip(["", *args], args, strict=False):  # (previous argument, argument)
        if flag in ("--config", "-c"):
            layer = arg
        elif arg.startswith("--config="):
            layer = arg.partition("=")[2]
        else:
            continue
        if not os.path.isfile(layer):  # os.path: the text of an inline configuration is no valid path
            layers.append(f"inline configuration sha256:{hashlib.sha256(layer.encode()).hexdigest()[:16]}")
        elif Path(layer).parent not in PRESETS.values():
            layers.append(str(Path(layer).resolve()))
    return layers


def check_out(out: Path, experiment: list[str]) -> None:
    """Refuse, before anything is written, an ``--out`` that embed cannot write into: a file, a directory of files
    embed did not write (it would replace a manifest.csv or arrays.yaml there), another experiment's embed output."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(
            f"--out {out}: {existing} is a file, not a directory; name a directory for the arrays (it is created if "
            "missing)"
        )
    partial_record = (out / EMBED_RECORD).with_suffix(".tmp")  # a first start stopped while writing its record
    if existing != out or not any(p != partial_record for p in out.iterdir()):
        return
    record_file = out / EMBED_RECORD
    record = yaml.safe_load(record_file.read_text()) if record_file.is_file() else None
    if not isinstance(record, dict) or "datasets" not in record:
        names = sorted(p.name for p in out.iterdir())
        raise ConfigError(
            f"--out {out} holds files that brokenbind embed did not write ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}; no {EMBED_RECORD} of its own), and embed would replace any "
            "<dataset>/manifest.csv and arrays.yaml there; name a new or empty directory for the arrays"
        )
    if record.get("experiment") != experiment:
        raise ConfigError(
            f"--out {out} is the embed output of another experiment: {record_file} names "
            f"{describe(record.get('experiment'))}, this run {describe(experiment)}; its arrays.yaml and manifests are "
            f"that experiment's. Name another --out for this one (or delete {out} to encode this one there)"
        )


def describe(experiment: list[str] | None) -> str:
    """``experiment_of``'s layers for a message (a record written before embed named them has none)."""
    return ", ".join(experiment or []) or "no experiment file"


# -- the predict run ---------------------------------------------------------------------------------------------------
class EncodeRows(Dataset):
    """The rows of one (dataset, modality) still to encode: ``{"x": input, "row": array row}``."""

    def __init__(self, rows: ManifestDataset, modality: str, positions: np.ndarray):
        self.rows, self.modality, self.positions = rows, modality, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.rows.load(self.modality, i), "row": int(self.positions[i])}


class Encoders(LightningModule):
    """The frozen backbones of the encoded modalities; ``predict_step`` returns one batch's features in fp32."""

    def __init__(self, backbones: dict[str, Backbone], layout: "Layout"):
        super().__init__()
        self.backbones, self.layout = nn.ModuleDict(backbones), layout

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self.backbones[self.layout.active[dataloader_idx][1]](batch["x"]).float()


class EmbedData(LightningDataModule):
    """The rows still to encode, one loader per (dataset, modality) with rows left (``source`` is set up already).
    Global rank 0 lays out OUT first (``Layout.prepare``); then every rank reads what is left to do."""

    def __init__(self, source: ManifestDataModule, layout: "Layout"):
        super().__init__()
        self.source, self.layout = source, layout

    def predict_dataloader(self) -> list[DataLoader]:
        if self.trainer.is_global_zero:
            self.layout.prepare(self.source, self.trainer.lightning_module.backbones)
        self.trainer.strategy.barrier("brokenbind-embed-layout")
        todo = {target: np.flatnonzero(self.layout.todo(*target)) for target in self.layout.targets}
        self.layout.active = [target for target, positions in todo.items() if len(positions)]
        loaders = []
        for dataset, modality in self.layout.active:
            positions = todo[(dataset, modality)]
            rows = array_rows(self.source, dataset, modality)[positions]
            data = self.source.load_rows(dataset, rows, [modality])
            loaders.append(
                DataLoader(
                    EncodeRows(data, modality, positions),
                    batch_size=self.source.eval_batch_size,
                    num_workers=self.source.num_workers,
                )
            )
        return loaders


class ArrayWriter(BasePredictionWriter):
    """Writes each batch's features into its array, then marks its rows done: a stop at any point leaves every row
    marked done written (both are shared memory maps; a killed process's pages still reach the file)."""

    def __init__(self, layout: "Layout"):
        super().__init__(write_interval="batch")
        self.layout = layout
        self.rows_encoded = 0
        self.interrupted = False  # by Ctrl-C: Lightning's KeyboardInterrupt handling ends in sys.exit(1)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Tensor,
        batch_indices: Sequence[int] | None,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        target = self.layout.active[dataloader_idx]
        rows = batch["row"].cpu().numpy()
        array, todo = self.layout.open(*target)
        array[rows] = prediction.detach().cpu().numpy().astype(array.dtype)
        todo[rows] = False
        self.rows_encoded += len(rows)
        if trainer.received_sigterm:  # Lightning's predict loop runs on after SIGTERM: stop here, the batch written
            raise self.stopped("SIGTERM")

    def stopped(self, signal_name: str) -> Stopped:
        """The stop by ``signal_name`` (exit code 128 + its number), naming the command that continues."""
        return Stopped(
            f"stopped by {signal_name} after encoding {self.rows_encoded} rows into {self.layout.out}; resume with "
            f"`{self.layout.command}`",
            SIGNAL_EXIT[signal_name],
        )

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.interrupted = isinstance(exception, KeyboardInterrupt)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.layout.flush()
        trainer.strategy.barrier("brokenbind-embed-done")
        if trainer.is_global_zero:
            self.layout.finish()


class Layout:
    """The files of OUT (see the module docstring) and their state."""

    def __init__(
        self,
        out: Path,
        targets: list[Target],
        specs: dict[str, BackboneSpec],
        dtype: Dtype,
        experiment: list[str],
        command: str,
    ):
        """``specs``: the backbone of every modality the datasets use (the encoded ones are read as ``identity`` in
        arrays.yaml, the others keep theirs); ``experiment``: what OUT belongs to (``experiment_of``); ``command``:
        the one that continues OUT after a stop."""
        self.out, self.targets, self.specs, self.dtype = out, targets, specs, dtype
        self.experiment, self.command = experiment, command
        self.active: list[Target] = []  # the targets with rows left, in the order of the predict loaders
        self._open: dict[Target, tuple[np.memmap, np.memmap]] = {}
        self._entries: dict[Target, dict[str, Any]] = {}

    def array(self, dataset: str, modality: str) -> Path:
        return self.out / dataset / f"{modality}.npy"

    def ids(self, dataset: str, modality: str) -> Path:
        return self.out / dataset / f"{modality}_ids.txt"

    def todo_file(self, dataset: str, modality: str) -> Path:
        return self.out / dataset / f"{modality}.todo.npy"

    @property
    def record_file(self) -> Path:
        return self.out / EMBED_RECORD

    def record(self) -> dict[str, Any]:
        if not self.record_file.is_file():
            return {"version": 1, "experiment": self.experiment, "datasets": {}}
        return yaml.safe_load(self.record_file.read_text())

    def todo(self, dataset: str, modality: str) -> np.ndarray:
        """Which array rows are still to encode (none once complete)."""
        path = self.todo_file(dataset, modality)
        if path.is_file():
            return np.load(path)
        return np.zeros(np.load(self.array(dataset, modality), mmap_mode="r").shape[0], dtype=bool)

    def open(self, dataset: str, modality: str) -> tuple[np.memmap, np.memmap]:
        key = (dataset, modality)
        if key not in self._open:
            self._open[key] = (
                np.load(self.array(*key), mmap_mode="r+"),
                np.load(self.todo_file(*key), mmap_mode="r+"),
            )
        return self._open[key]

    def flush(self) -> None:
        for array, todo in self._open.values():
            array.flush()
            todo.flush()
        self._open.clear()

    def entry(self, source: ManifestDataModule, backbones: dict[str, Backbone], target: Target) -> dict[str, Any]:
        """What embed.yaml records of one (dataset, modality): what makes its array what it is. Computed once per
        process (the data fingerprint stats every file of the rows)."""
        if target not in self._entries:
            dataset, modality = target
            self._entries[target] = {
                "backbone": self.specs[modality],
                "fingerprint": backbones[modality].fingerprint(),
                "data": data_fingerprint(source, dataset, modality),
                "rows": len(array_rows(source, dataset, modality)),
                "width": int(backbones[modality].out_dim),
                "dtype": self.dtype,
            }
        return self._entries[target]

    def pending(self, source: ManifestDataModule, backbones: dict[str, Backbone]) -> list[Target]:
        """The targets not encoded completely yet. Reads OUT only; an array encoded with other settings (encoder,
        data, dtype) is refused, in one paragraph naming what differs."""
        record, pending = self.record(), []
        for target in self.targets:
            entry, stored = self.entry(source, backbones, target), record["datasets"].get(target[0], {}).get(target[1])
            different = [k for k in entry if stored is not None and stored.get(k) != entry[k]]
            if different and self.array(*target).exists():
                raise ConfigError(
                    f"{self.array(*target)} was encoded with other settings: {', '.join(different)} differ (see "
                    f"{self.record_file}); choose another --out, or delete {self.out / target[0]}/{target[1]}* to "
                    "encode it again"
                )
            if stored is None or different or not stored.get("complete"):
                pending.append(target)
        return pending

    def prepare(self, source: ManifestDataModule, backbones: dict[str, Backbone]) -> None:
        """Write embed.yaml first (it makes OUT this experiment's embed output and records the arrays to write
        incomplete, so that a stop at any later point leaves what the same command continues), then create what is
        missing (arrays and their todo lists, ids files) and write the manifests and arrays.yaml; a stopped run's
        arrays are kept (``pending`` checked them)."""
        record, missing = self.record(), []
        record.update(command=self.command, directory=str(Path.cwd()))
        for target in self.pending(source, backbones):
            entry = {**self.entry(source, backbones, target), "complete": False}
            if record["datasets"].get(target[0], {}).get(target[1]) != entry or not self.todo_file(*target).is_file():
                missing.append(target)
            record["datasets"].setdefault(target[0], {})[target[1]] = entry
        self._write_record(record)
        for target in missing:
            entry = self.entry(source, backbones, target)
            self._create(source, *target, entry["rows"], entry["width"])
        for dataset in source.datasets:  # every one: arrays.yaml reads all datasets from OUT
            self._write_manifest(source, dataset)
        self._write_layer(source)

    def _create(self, source: ManifestDataModule, dataset: str, modality: str, rows: int, width: int) -> None:
        directory = self.out / dataset
        directory.mkdir(parents=True, exist_ok=True)
        ids = row_ids(source, dataset)
        self.ids(dataset, modality).write_text(
            "".join(f"{ids[row]}\n" for row in array_rows(source, dataset, modality))
        )
        np.lib.format.open_memmap(self.array(dataset, modality), "w+", self.dtype, (rows, width)).flush()
        # the todo list appears whole (a stop while it is filled must not leave rows marked done): the array before it
        partial = self.todo_file(dataset, modality).with_suffix(".tmp")
        todo = np.lib.format.open_memmap(partial, "w+", np.bool_, (rows,))
        todo[:] = True
        todo.flush()
        partial.replace(self.todo_file(dataset, modality))

    def _write_manifest(self, source: ManifestDataModule, dataset: str) -> None:
        """id, label, split of every row and the cells of the modalities that stay raw (file paths made absolute)."""
        table = source.tables()[dataset]
        frame = {
            "id": row_ids(source, dataset),
            "label": source.class_names(torch.as_tensor(table.labels)),
            "split": table.splits,
        }
        encoded = {m for d, m in self.targets if d == dataset}
        for m in source.needed_modalities(dataset):
            if m in encoded:
                continue
            if m in table.arrays:
                continue  # an array already: arrays.yaml names it (rows keep their order and ids)
            if m not in table.paths:  # text
                frame[m] = table.manifest.column(m)
                continue
            frame[m] = ["" if p is None else str(p.resolve()) for p in table.paths[m]]
        path = self.out / dataset / "manifest.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(frame).to_csv(path, index=False)

    def _write_layer(self, source: ManifestDataModule) -> None:
        """arrays.yaml: the datamodule over OUT's manifests and arrays, every other data setting as this run's."""
        encoded = {m for _, m in self.targets}
        kept = {
            key: getattr(source, key)
            for key in ("batch_size", "eval_batch_size", "sampling", "num_workers", "image_size", "sample_rate")
        }
        init_args = {
            "manifests": {name: str(self.out / name / "manifest.csv") for name in source.datasets},
            "modalities": {m: "features" if m in encoded else kind for m, kind in source.modalities.items()},
            "arrays": {name: self._arrays(source, name) for name in source.datasets if self._arrays(source, name)},
            "datasets": {name: {"modalities": list(spec.modalities)} for name, spec in source.datasets.items()},
            "pivot": source.pivots[0] if len(source.pivots) == 1 else source.pivots,
            "flows": [{"dataset": f.dataset, "flow": f.flow} for f in source.flows],
            "oracle": source.oracle,
            "audio_seconds": source.audio_seconds,
            "image_channels": source.image_channels,
            **kept,
        }
        layer = {
            "data": {"class_path": "datamodules.ManifestDataModule", "init_args": init_args},
            # encoded modalities are read as they were encoded (identity); the others keep their backbones
            "model": {"backbones": {m: "identity" if m in encoded else spec for m, spec in self.specs.items()}},
        }
        header = f"# by brokenbind embed; train with: brokenbind fit --config E.yaml --config {self.layer_file}\n"
        self.layer_file.write_text(header + yaml.safe_dump(layer, sort_keys=False))

    def _arrays(self, source: ManifestDataModule, dataset: str) -> dict[str, Any]:
        """The arrays of ``dataset`` in arrays.yaml: those the experiment read already and those written here."""
        given = {
            m: {"path": str(path.resolve()), **({"ids": str(ids.resolve())} if ids else {})}
            for m, (path, ids) in source.arrays.get(dataset, {}).items()
        }
        for target in (t for t in self.targets if t[0] == dataset):
            given[target[1]] = {"path": str(self.array(*target)), "ids": str(self.ids(*target))}
        return given

    @property
    def layer_file(self) -> Path:
        return self.out / "arrays.yaml"

    def _write_record(self, record: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.record_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(record, sort_keys=False))
        tmp.replace(self.record_file)

    def finish(self) -> None:
        """Mark every (dataset, modality) whose rows are all encoded complete and drop its todo list."""
        record = self.record()
        for dataset, modality in self.targets:
            todo_file = self.todo_file(dataset, modality)
            if todo_file.is_file() and not np.load(todo_file).any():
                record["datasets"][dataset][modality]["complete"] = True
                todo_file.unlink()
        self._write_record(record)

    def remaining(self) -> dict[Target, int]:
        return {t: int(self.todo(*t).sum()) for t in self.targets}


# -- the command -------------------------------------------------------------------------------------------------------
def parser() -> LightningArgumentParser:
    """The experiment's configuration, parsed as ``brokenbind fit`` parses it (defaults, presets, unknown keys are
    errors), plus embed's own options."""
    parser = new_parser(default_config_files=[str(DEFAULTS)], parser_mode="omegaconf")
    add_run_arguments(parser)
    parser.add_argument("--out", type=str, required=True, help="directory of the arrays (see brokenbind.embed)")
    parser.add_argument("--modalities", type=list[str] | None, default=None, help="default: every one that can")
    parser.add_argument("--dtype", type=Dtype, default="float32", help="of the arrays (float16 halves them)")
    return parser


def embed(
    config: Config | Sequence[Config],
    out: str | Path,
    modalities: Sequence[str] | None = None,
    dtype: Dtype = "float32",
    overrides: Overrides = (),
) -> Embedded:
    """Encode an experiment's datasets into ``out`` (see the module docstring); the same as
    ``brokenbind embed --config CONFIG --out OUT [--modalities ...] [--dtype ...] [OVERRIDES]``."""
    args = [*config_args(config), f"--out={out}", f"--dtype={dtype}", *override_args(overrides)]
    if modalities is not None:
        args.append(f"--modalities={list(modalities)}")
    return run(args)


def run(args: Sequence[str]) -> Embedded:
    """``brokenbind embed ARGS`` in this process. A configuration or data error raises ``ConfigError`` /
    ``DataError`` (jsonargparse's parse errors become a ``ConfigError`` in one paragraph). Under DDP, Lightning starts
    the other ranks by running this process's command line again (``brokenbind embed ...``, or the calling script)."""
    silence_known_warnings()
    fresh_process_state()
    command = shlex.join(["brokenbind", "embed", *args])  # the one that continues after a stop
    try:
        with user_errors():
            reader = parser()
            config = reader.parse_args(expand_presets(list(args)))
            check_accelerator(config.trainer.accelerator)
            seed_everything(None if config.seed_everything is True else config.seed_everything, workers=True)
            built = reader.instantiate_classes(config)
            if not isinstance(built.data, ManifestDataModule):
                raise ConfigError(
                    f"data.class_path is {type(built.data).__name__}, which holds its inputs in memory as features "
                    "already: brokenbind embed encodes the files of a ManifestDataModule (manifests, shards, the "
                    "built-in digits); train this experiment with brokenbind fit as it is"
                )
            return _encode(config, built, command, experiment_of(list(args)))
    except KeyboardInterrupt as stop:  # Ctrl-C outside the predict run: reading the data, building the encoders
        raise Stopped(f"stopped by SIGINT; resume with `{command}`", SIGNAL_EXIT["SIGINT"]) from stop


def _encode(config: Namespace, built: Namespace, command: str, experiment: list[str]) -> Embedded:
    source, model, out = built.data, built.model, Path(config.out)
    check_out(out, experiment)  # every rank, before any writes: the ranks meet in the predict run
    source.prepare_data()  # every rank: a datamodule that makes its data (the digits) writes it atomically
    source.setup("predict")
    backbones, skipped = choose(source, model, config.modalities)
    targets = [(d, m) for d in sorted(source.datasets) for m in source.needed_modalities(d) if m in backbones]
    check_raw_files(source, targets)
    used = sorted({m for d in source.datasets for m in source.needed_modalities(d)})
    layout = Layout(out, targets, {m: spec_of(model, m) for m in used}, config.dtype, experiment, command)
    writer = ArrayWriter(layout)
    # a predict trainer without logger, checkpoints or the experiment's callbacks
    no_run = {"callbacks": [writer], "logger": False, "enable_checkpointing": False, "default_root_dir": config.out}
    trainer = Trainer(**{**built.trainer, **no_run})
    if layout.pending(source, backbones):  # refuses a mismatched OUT before any process starts
        ctrl_c = signal.getsignal(signal.SIGINT)
        try:
            trainer.predict(Encoders(backbones, layout), datamodule=EmbedData(source, layout), return_predictions=False)
        except SystemExit as stop:  # Lightning ends a Ctrl-C with sys.exit(1), the writer told of the interrupt
            if not writer.interrupted:
                raise
            signal.signal(signal.SIGINT, ctrl_c)  # Lightning ignores Ctrl-C after one; a library caller goes on
            raise writer.stopped("SIGINT") from stop
    remaining = layout.remaining()
    configs = " ".join(f"--config {p}" for p in experiment_files(config))
    name = experiment_name(config)
    embedded = Embedded(
        out=out,
        arrays={d: {m: (layout.array(d, m), layout.ids(d, m)) for dd, m in targets if dd == d} for d, _ in targets},
        config_layer=layout.layer_file,
        fit_command=f"brokenbind fit {configs} --config {layout.layer_file} --experiment {name}_arrays",
        complete=not any(remaining.values()),
        rows_encoded=writer.rows_encoded,
    )
    if trainer.is_global_zero:
        report(embedded, remaining, skipped)
    return embedded


def report(embedded: Embedded, remaining: dict[Target, int], skipped: dict[str, str]) -> None:
    """What was written, the arrays block to train on, and what was left raw and why (stdout)."""
    for (dataset, modality), left in remaining.items():
        path = embedded.arrays[dataset][modality][0]
        array = np.load(path, mmap_mode="r")
        state = "complete" if not left else f"{left} rows still to encode"
        print(f"{dataset}/{modality}: {array.shape[0]} x {array.shape[1]} {array.dtype} in {path} ({state})")
    for modality, why in skipped.items():
        print(f"{modality}: not encoded ({why})")
    if not embedded.complete:
        print("incomplete: run the same command again to encode the rest (rows already written are kept)")
    layer = yaml.safe_load(embedded.config_layer.read_text())
    print(f"train on the arrays: {embedded.fit_command}")
    print(f"(the data block of {embedded.config_layer}; its arrays, to paste into an experiment's data.init_args:)")
    print(yaml.safe_dump({"arrays": layer["data"]["init_args"]["arrays"]}, sort_keys=False), end="")


def main(args: list[str]) -> None:
    """``brokenbind embed``: see the module docstring (``--help`` lists the options)."""
    run(args)
