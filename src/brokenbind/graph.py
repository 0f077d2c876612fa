"""Which training datasets link through shared modalities: the one place chains, reachability and pivots are computed.

Datasets are nodes, linked when they observe a common modality (BrokenBind Appendix B). Everything here is a function
of ``{dataset: modalities}`` in the configured dataset order (the order decides ties: the first dataset wins) and of
the configured pivots. Pure Python: data layers, methods and callbacks all read the same object.
"""

from collections.abc import Iterable, Mapping

from brokenbind.errors import ConfigError


class PairingGraph:
    """The pairing of training datasets: ``datasets`` maps each dataset to the modalities it observes in training,
    ``pivots`` are the configured pivot modalities (empty when the experiment names none)."""

    def __init__(self, datasets: Mapping[str, Iterable[str]], pivots: Iterable[str] = ()):
        self.datasets: dict[str, tuple[str, ...]] = {ds: tuple(mods) for ds, mods in datasets.items()}
        self.pivots: tuple[str, ...] = tuple(pivots)

    def __repr__(self) -> str:
        return f"PairingGraph({self.datasets!r}, pivots={list(self.pivots)!r})"

    def modalities(self) -> set[str]:
        """Every modality some training dataset observes."""
        return {m for mods in self.datasets.values() for m in mods}

    def holders(self, *modalities: str) -> list[str]:
        """The training datasets observing all of ``modalities``, in dataset order."""
        return [ds for ds, mods in self.datasets.items() if set(modalities) <= set(mods)]

    def observed_together(self, first: str, second: str) -> bool:
        """Whether some training dataset observes both modalities (else their binding is emergent)."""
        return bool(self.holders(first, second))

    def chain(self, dataset: str, target: str) -> list[str]:
        """The shortest path of datasets, linked by shared modalities, from one observing ``target`` to ``dataset``;
        ``[dataset]`` when no other dataset observing ``target`` is linked to it."""
        paths = [[dataset]]
        while paths:
            path = paths.pop(0)
            if target in self.datasets[path[-1]] and path[-1] != dataset:
                return path[::-1]
            shared = set(self.datasets[path[-1]])
            paths += [[*path, n] for n, mods in self.datasets.items() if n not in path and shared & set(mods)]
        return [dataset]

    def reachable(self, dataset: str) -> set[str]:
        """Modalities ``dataset`` can reach: its own, then those of every dataset sharing one it can reach."""
        have = set(self.datasets[dataset])
        grown = True
        while grown:
            grown = False
            for mods in self.datasets.values():
                if have & set(mods) and not set(mods) <= have:
                    have |= set(mods)
                    grown = True
        return have

    def next_level(self, dataset: str, have: Iterable[str]) -> dict[str, tuple[str, str]]:
        """One level of the shortest chains of datasets (BrokenBind Appendix B): each modality that ``dataset`` lacks
        (is not in ``have``) and another dataset observes with one modality of ``have``, mapped to (that dataset, the
        shared pivot); the first such dataset wins. Empty when nothing more is reachable."""
        have, level = set(have), {}
        for source, modalities in self.datasets.items():
            shared, targets = sorted(have & set(modalities)), sorted(set(modalities) - have)
            if source == dataset or not shared or not targets:
                continue
            if len(shared) > 1:
                raise ConfigError(
                    f"datasets {dataset!r} and {source!r} share several modalities {shared}: the pivot is ambiguous"
                )
            for target in targets:
                level.setdefault(target, (source, shared[0]))
        return level

    def steps(self) -> list[tuple[str, str, str]]:
        """(dataset, pivot, target) steps that complete every dataset: each modality a dataset lacks and reaches
        through shared modalities, level by level along the shortest chains (a step's pivot may be a target of an
        earlier level)."""
        steps = []
        for ds, mods in self.datasets.items():
            have = set(mods)
            while level := self.next_level(ds, have):
                steps += [(ds, pivot, target) for target, (_, pivot) in level.items()]
                have |= set(level)
        return steps

    def anchor_holder(self, pivot: str, target: str) -> str | None:
        """The first training dataset observing both ``pivot`` and ``target`` (the anchor rows of a retrieval through
        the pivot), or None when none does (a chain of three datasets or more)."""
        holders = self.holders(pivot, target)
        return holders[0] if holders else None
