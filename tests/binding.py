"""Methods on hand-made batches: prepared with the pairing graph of the batch's own datasets, as a fit prepares them
with the datamodule's (``BindingModule.on_fit_start``)."""

from torch import Tensor

from brokenbind.graph import PairingGraph
from brokenbind.methods.base import BindingMethod, Embeddings
from brokenbind.methods.extrapolation import Pseudo


def paired(
    method: BindingMethod, embeddings: Embeddings, observed: dict[str, list[str]] | None = None
) -> BindingMethod:
    """``method`` with the pairing graph of ``observed`` (by default, of ``embeddings``' datasets and modalities; the
    base ``prepare``: nothing is fitted)."""
    graph = PairingGraph(observed or {ds: list(mods) for ds, mods in embeddings.items()})
    BindingMethod.prepare(method, lambda *_: {}, graph)
    return method


def run(
    method: BindingMethod, embeddings: Embeddings, observed: dict[str, list[str]] | None = None, **kwargs
) -> dict[str, Tensor]:
    """The loss terms of ``method`` on one batch (``MethodOutput.terms``)."""
    return paired(method, embeddings, observed)(embeddings, **kwargs).terms


def pseudo_of(
    method: BindingMethod, embeddings: Embeddings, dataset: str, observed: dict[str, list[str]] | None = None
) -> dict[str, Pseudo]:
    """``BrokenBind.pseudo_embeddings`` of ``dataset`` on one batch."""
    return paired(method, embeddings, observed).pseudo_embeddings(embeddings, dataset)
