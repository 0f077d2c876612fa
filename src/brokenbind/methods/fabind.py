"""Fine-tuning baseline ("+FT" in BrokenBind's tables): symmetric InfoNCE on each dataset's observed pairs.

With two-modality datasets that share the pivot, every pair contains the pivot, so this is ImageBind-style
fixed-anchor binding with the pivot as anchor.
"""

from torch import Tensor

from brokenbind.losses.clip import symmetric_info_nce
from brokenbind.methods.base import BindingMethod, Embeddings, modality_pairs


class FABind(BindingMethod):
    name = "fabind"

    def forward(self, embeddings: Embeddings, epoch: int) -> dict[str, Tensor]:
        pairs = modality_pairs(embeddings)
        if not pairs:
            raise ValueError("fabind needs at least one dataset observing two modalities")
        clip = sum(
            symmetric_info_nce(embeddings[ds][m], embeddings[ds][n], self.scale(m), self.scale(n)) for ds, m, n in pairs
        )
        return {"clip": clip}
