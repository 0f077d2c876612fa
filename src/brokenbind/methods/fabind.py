"""Fine-tuning / fixed-anchor binding ("+FT" in BrokenBind's tables): symmetric InfoNCE on observed pairs.

Without an anchor every pair a dataset observes is contrasted; with two-modality datasets that share the pivot, every
pair contains the pivot, so this is ImageBind-style fixed-anchor binding with the pivot as anchor. With ``anchor`` set,
only pairs containing it are contrasted, and every dataset must observe it.
"""

from torch import Tensor

from brokenbind.errors import ConfigError
from brokenbind.losses.clip import symmetric_info_nce
from brokenbind.losses.distributed import Batch
from brokenbind.methods.base import BindingMethod, modality_pairs


class FABind(BindingMethod):
    name = "fabind"

    def __init__(
        self,
        anchor: str | None = None,
        logit_scale: float = 10.0,
        learn_logit_scale: bool = False,
        modality_scales: dict[str, float] | None = None,
    ):
        super().__init__(logit_scale, learn_logit_scale, modality_scales)
        self.anchor = anchor

    def terms(self, batch: Batch, epoch: int, max_epochs: int | None) -> dict[str, Tensor]:
        pairs = modality_pairs(batch.local)
        if self.anchor is not None:
            missing = [ds for ds, mods in batch.local.items() if self.anchor not in mods]
            if missing:
                raise ConfigError(f"fabind anchor {self.anchor!r} is not observed by datasets {missing}")
            pairs = [(ds, m, n) for ds, m, n in pairs if self.anchor in (m, n)]
        if not pairs:
            raise ConfigError("fabind needs at least one dataset observing two modalities")
        local, full = batch.local, batch.full
        clip = sum(
            symmetric_info_nce(
                local[ds][m], local[ds][n], self.scale(m), self.scale(n), full[ds][m], full[ds][n], batch.offset
            )
            for ds, m, n in pairs
        )
        return {"clip": clip}
