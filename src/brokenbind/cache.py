"""Feature cache: each instance's frozen-backbone output, computed once and reused in every later epoch.

Only for backbones whose output is a fixed function of the input: frozen, no LoRA, a ``fingerprint`` (model, weights
hash, preprocessing), and data without random augmentation. Entries are keyed by a hash of that fingerprint, the
datamodule's data fingerprint (files and their versions) and the modality, so a changed encoder, preprocessing or
dataset never reads a stale entry; within a key, by global instance id. Features are stored in fp32 on the CPU.
With a ``directory`` the tables persist across runs (one ``<key>.pt`` file each).
"""

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor


def cache_key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


class FeatureCache:
    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else None
        self.tables: dict[str, dict[int, Tensor]] = {}
        self.changed: set[str] = set()

    def _table(self, key: str) -> dict[int, Tensor]:
        if key not in self.tables:
            path = self._path(key)
            self.tables[key] = torch.load(path, weights_only=True) if path and path.is_file() else {}
        return self.tables[key]

    def _path(self, key: str) -> Path | None:
        return self.directory / f"{key}.pt" if self.directory else None

    def missing(self, key: str, index: Tensor) -> list[int]:
        """Positions in ``index`` whose instances are not cached yet."""
        table = self._table(key)
        return [pos for pos, i in enumerate(index.tolist()) if i not in table]

    def get(self, key: str, index: Tensor) -> Tensor | None:
        """The cached features of every instance in ``index``, or None if any is missing."""
        table = self._table(key)
        ids = index.tolist()
        if not all(i in table for i in ids):
            return None
        return torch.stack([table[i] for i in ids])

    def put(self, key: str, index: Tensor, features: Tensor) -> None:
        table = self._table(key)
        table.update(zip(index.tolist(), features.detach().float().cpu().unbind(), strict=True))
        self.changed.add(key)

    def save(self) -> None:
        """Write changed tables (atomically: a reader never sees half a file)."""
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for key in self.changed:
            path = self._path(key)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(self.tables[key], tmp)
            tmp.replace(path)
        self.changed.clear()
