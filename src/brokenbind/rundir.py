"""The directory a run writes into (application layer): ``<save_dir>/<experiment>[/<method>]/version_N`` (under SLURM
``.../slurm_<job id>``, so that a requeued job finds its own directory and nothing else).

It holds TensorBoard logs, ``config.yaml``, ``results.csv`` and ``checkpoints/``: ``best-epochNNN.ckpt`` (best
validation mAP) and ``last.ckpt`` (the true last state: every epoch and whenever a signal stops the run). A run
started with ``--ckpt_path`` continues the checkpoint's run directory; ``--ckpt_path last`` picks the newest run of
the experiment. A run directory has one writer at a time: the process that writes locks it (``brokenbind.runlock``).
"""

import os
import re
import shutil
from pathlib import Path
from types import TracebackType

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_only

from brokenbind.checkpoints import checkpoint_digest, load_checkpoint
from brokenbind.errors import ConfigError, StorageError
from brokenbind.messages import user_error
from brokenbind.runlock import RunLock
from brokenbind.settings import Settings


class RunDir:
    """A run's directory, as a context manager: ``resolve`` names it (creating a new run's exclusively), ``lock``
    takes its writer lock once the trainer knows which process writes, and leaving the context releases the lock and,
    when the start failed with an error a user can fix, removes what this start created (unless it holds a
    checkpoint)."""

    def __init__(self, path: Path, checkpoint: Path | None = None, created: Path | None = None):
        self.path, self.checkpoint = path, checkpoint  # the checkpoint the run starts from, if any
        self.created = created  # the topmost directory this start created
        self._lock: RunLock | None = None

    @classmethod
    def resolve(cls, settings: Settings, claim: bool = True) -> "RunDir":
        """The run directory and the checkpoint to start from. A checkpoint inside a run directory continues that
        directory; ``last`` is the newest run of this experiment that has one; a requeued SLURM job resumes its own
        directory; anything else is a new ``version_N`` (created now when ``claim``; only named otherwise)."""
        root, ckpt, fit = settings.save_dir / settings.run_name, settings.config.ckpt_path, settings.subcommand == "fit"
        new = claim_new_run if claim else lambda root: (root / next_version(root), None)
        if ckpt == "last":
            runs = [p for p in root.glob("*") if (p / "checkpoints" / "last.ckpt").is_file()]
            if not runs:
                raise ConfigError(f"--ckpt_path last: no run under {root} has checkpoints/last.ckpt")
            ckpt = max(runs, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime_ns) / "checkpoints"
            ckpt = ckpt / "last.ckpt"
        if ckpt is not None:
            ckpt = Path(ckpt)
            if not ckpt.is_file():
                raise ConfigError(f"checkpoint not found: {ckpt}; pass the path of a .ckpt file or 'last'")
            parent = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
            if (parent / "config.yaml").is_file():  # a run directory: continue it, named as when it was written
                callbacks = load_checkpoint(ckpt).get("callbacks", {})
                dirs = [v.get("dirpath") for k, v in callbacks.items() if k.startswith("ModelCheckpoint")]
                written = dirs[0] if dirs else None
                if written and Path(written).resolve() == (parent / "checkpoints").resolve():
                    return cls(Path(written).parent, ckpt)  # Lightning warns when a checkpoint's directory is renamed
                relative = Path(os.path.relpath(parent.resolve()))
                return cls(parent if relative.parts[:1] == ("..",) else relative, ckpt)
            if fit:  # a new run that starts from the weights of a copied checkpoint
                path, created = new(root)
                return cls(path, ckpt, created)
            # scoring a checkpoint kept outside its run: one directory per checkpoint content, so scoring it again
            # replaces its rows there rather than adding a run
            return cls(root / f"checkpoint_{checkpoint_digest(ckpt)}", ckpt)
        version = slurm_version()
        if version is not None and fit:
            path = root / version
            return cls(path, newest_checkpoint(path))  # a requeued job resumes; a new job starts fresh
        path, created = new(root)
        return cls(path, None, created)

    def lock(self, trainer: Trainer, subcommand: str) -> None:
        """Take the writer lock in the process that writes (global rank 0), before anything is written."""
        if not trainer.is_global_zero:
            return
        self._lock = RunLock(self.path)
        try:
            created = self._lock.acquire(subcommand)
        except OSError as error:
            raise unwritable(self.path, error) from error
        self.created = self.created or created

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if error is not None and user_error(error) is not None:
            self.remove_failed_start()

    def remove_failed_start(self) -> None:
        """A run directory that a failed start created holds no result: remove it, and the directories above it that
        this start created (``logs/<experiment>``) when nothing else is in them."""
        path, created = self.path, self.created
        if created is None or not path.is_dir() or any(path.glob("checkpoints/*.ckpt")):
            return
        shutil.rmtree(path)
        for parent in path.parents:
            if parent == created.parent or any(parent.iterdir()):
                break
            parent.rmdir()


def slurm_version() -> str | None:
    """``slurm_<job id>`` for a batch job on SLURM (a requeued job keeps its id), None elsewhere."""
    if not SLURMEnvironment.detect() or SLURMEnvironment.job_name() in ("bash", "interactive"):
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"slurm_{array}_{task}" if array and task else f"slurm_{os.environ['SLURM_JOB_ID']}"


def next_version(root: Path) -> str:
    numbers = [int(m.group(1)) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return f"version_{max(numbers, default=-1) + 1}"


def claim_new_run(root: Path) -> tuple[Path, Path | None]:
    """A new run directory ``root/version_N`` and the topmost directory this call created. The directory is created
    exclusively: of two runs started together, one gets N and the other, finding it taken, the next number. Only the
    process that will write (global rank 0: DDP's other ranks start from the same command line later) creates it."""
    if rank_zero_only.rank != 0 or int(os.environ.get("NODE_RANK", 0)) != 0:
        return root / next_version(root), None
    created = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
    while True:
        run_dir = root / next_version(root)
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            continue  # another run took this number between the listing and the mkdir
        except OSError as error:
            raise unwritable(run_dir, error) from error
        return run_dir, created or run_dir


def unwritable(path: Path, error: OSError) -> StorageError:
    """The error of a run directory that cannot be created or written into."""
    where = f" ({error.filename})" if error.filename else ""
    return StorageError(
        f"cannot write the run directory {path}: {error.strerror or error}{where}; runs are written under "
        "trainer.logger.init_args.save_dir: make that directory writable (permissions, "
        "`lsattr` for the immutable attribute, free space) or name another with --trainer.logger.init_args.save_dir"
    )


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest of ``last.ckpt`` and Lightning's preemption checkpoints ``hpc_ckpt_N.ckpt`` in a run directory."""
    candidates = [*run_dir.glob("hpc_ckpt_*.ckpt"), run_dir / "checkpoints" / "last.ckpt"]
    existing = [p for p in candidates if p.is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime_ns) if existing else None
