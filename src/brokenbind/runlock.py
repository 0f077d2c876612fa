"""One writer per run directory: the process that writes into it holds ``<run>/writer.lock``.

Every ``brokenbind`` command that writes into a run directory (a new fit, a resume, test / validate / predict of one
of its checkpoints) locks it before writing anything and keeps the lock until it ends; a second writer is refused
with exit code 2, naming the holder. Under DDP only global rank 0 writes, so only it locks. ``writer.json`` beside
the lock records the holder (host, pid, when it took the lock, the command, and the process's start time from
``/proc``); a clean end removes it.

Stale locks. The lock is the operating system's (``filelock``: ``flock(2)``): the kernel releases it when the holding
process ends in any way (exit, crash, SIGKILL, the OOM killer), and ``filelock`` closes it in forked children
(DataLoader workers), so a dead writer never blocks a resume. A resume that finds ``writer.json`` left behind says
whose lock it takes over. The record is checked once more: a holder on this host whose pid still runs with the
recorded start time (a reused pid has another) while its lock is free means that the file system does not lock
(NFS mounted with ``nolock``), and the start is refused. Across hosts the lock is what the shared file system makes of
``flock``: NFSv4, GPFS, CephFS and Lustre mounted with ``-o flock`` share it between hosts and free the lock of a dead
node when its lease expires (NFSv4: about 90 s); NFS with ``local_lock=flock|all`` or ``nolock`` and Lustre with
``localflock`` keep locks per host, so two writers on two hosts are not kept apart there (a remote pid cannot be
probed). Without ``flock`` at all, ``filelock`` falls back to a marker file and warns.
"""

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from lightning.pytorch.utilities import rank_zero_info

from brokenbind.errors import ConfigError

LOCK, RECORD = "writer.lock", "writer.json"
WAIT_SECONDS = 2.0  # a holder that is just ending (and its record being written or removed) gets this long


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: str  # when it took the lock: local time with UTC offset
    command: str  # brokenbind fit / test / validate / predict
    process_start: int | None  # /proc/<pid>/stat start time (clock ticks since boot); None without /proc

    @classmethod
    def this_process(cls, subcommand: str) -> "Holder":
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            since=time.strftime("%Y-%m-%d %H:%M:%S%z"),
            command=f"brokenbind {subcommand}",
            process_start=process_start(os.getpid()),
        )

    @classmethod
    def read(cls, run_dir: Path) -> "Holder | None":
        try:
            return cls(**json.loads((run_dir / RECORD).read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):  # none, or one being written
            return None

    def running_here(self) -> bool:
        """Whether this holder is a live process on this host (a reused pid has another start time)."""
        if self.host != socket.gethostname():
            return False
        if self.process_start is not None and Path("/proc").is_dir():
            return process_start(self.pid) == self.process_start
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it exists
            return True
        return True

    def __str__(self) -> str:
        return f"`{self.command}` (host {self.host}, pid {self.pid}, since {self.since})"


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (field 22 of ``/proc/<pid>/stat``), None when
    there is no such process or no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # the command name, in parentheses, may hold spaces


class RunLock:
    """The writer lock of one run directory; ``acquire`` refuses (``ConfigError``) when another process holds it."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._lock = FileLock(run_dir / LOCK, timeout=WAIT_SECONDS)

    def acquire(self, subcommand: str) -> Path | None:
        """Lock the run directory (creating it); returns the topmost directory this call created, if any."""
        created = next((p for p in reversed([self.run_dir, *self.run_dir.parents]) if not p.exists()), None)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            holder = Holder.read(self.run_dir)
            raise ConfigError(
                f"run directory {self.run_dir} is in use by {holder or 'another process (it has not said which)'}: a "
                "run directory has one writer, and a second one would write its checkpoints and results.csv rows "
                "twice. Wait until that process ends or stop it (SIGTERM saves last.ckpt; resume with --ckpt_path "
                "last); to score one of its checkpoints meanwhile, copy the file out of the run directory and pass "
                "the copy"
            ) from None
        previous = Holder.read(self.run_dir)
        if previous is not None and previous.pid != os.getpid() and previous.running_here():
            self._lock.release()
            raise ConfigError(
                f"run directory {self.run_dir}: its writer lock was free although its holder {previous} still runs; "
                "the file system does not lock files (NFS mounted with nolock?). Wait until that process ends, or "
                "run in a directory on a file system with flock (--trainer.logger.init_args.save_dir)"
            )
        if previous is not None:
            rank_zero_info(
                f"run directory {self.run_dir}: taking over from {previous}, which ended without releasing it"
            )
        me = Holder.this_process(subcommand)
        partial = self.run_dir / f"{RECORD}.{me.pid}.tmp"  # atomic: a refused start may be reading it
        partial.write_text(json.dumps(asdict(me)) + "\n")
        partial.replace(self.run_dir / RECORD)
        return created

    def release(self) -> None:
        """Remove the record, then the lock (a failed start may already have removed the run directory)."""
        if self._lock.is_locked:
            (self.run_dir / RECORD).unlink(missing_ok=True)
            self._lock.release()
