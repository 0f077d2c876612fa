"""BrokenBind (arXiv 2602.06451): L = L_CLIP (Eq. 10) + L_Sym (Eqs. 11-12) + L_MOX (Eqs. 4-9), Algorithm 1.

Every weight defaults to the paper's 1. Choices the paper leaves open (method.md §2.4-2.6) are made here:
- embeddings, pseudo-inverses and R_Fro use the L2-normalised, unscaled embeddings;
- each contrastive term uses the logit scale of its anchor (real) modality;
- L_CLIP(m, dataset) averages its terms (1/3B each in the two-dataset case): InfoNCE against each other modality of
  the same dataset, and one push-away partition against each modality of every other dataset;
- L_MOX(t, dataset) averages one-way InfoNCE from each real modality of the dataset to the X-data pseudo embeddings
  of the missing modality t (real → pseudo only), and adds R_Fro between X-mod and X-data.
"""

import torch.nn.functional as F
from torch import Tensor

from brokenbind.losses.clip import info_nce, push_away
from brokenbind.losses.cyclip import cross_modal_cyclic, in_modal_cyclic
from brokenbind.losses.mox import frobenius, pivot_pinv, x_data, x_mod
from brokenbind.methods.base import BindingMethod, Embeddings, modality_pairs, shared_pivot


class BrokenBind(BindingMethod):
    """BrokenBind for datasets linked directly through a shared pivot modality.

    Args:
        clip_weight, sym_weight, mox_weight, fro_weight: weights of L_CLIP, L_Sym, the MOX contrastive part and R_Fro.
        consistency_epochs: epochs of consistency pre-training (L_CLIP + L_Sym) before MOX switches on
            (paper: 25 of 50).
        pinv_ridge: 0 is the paper's Moore-Penrose pseudo-inverse; > 0 regularises it (see ``losses.mox``).
    """

    name = "brokenbind"

    def __init__(
        self,
        clip_weight: float = 1.0,
        sym_weight: float = 1.0,
        mox_weight: float = 1.0,
        fro_weight: float = 1.0,
        consistency_epochs: int = 25,
        pinv_ridge: float = 0.0,
        logit_scale: float = 10.0,
        learn_logit_scale: bool = False,
        modality_scales: dict[str, float] | None = None,
    ):
        super().__init__(logit_scale, learn_logit_scale, modality_scales)
        if min(clip_weight, sym_weight, mox_weight, fro_weight, consistency_epochs, pinv_ridge) < 0:
            raise ValueError("loss weights, consistency_epochs and pinv_ridge must be non-negative")
        self.weights = {"clip": clip_weight, "sym": sym_weight, "mox": mox_weight, "fro": fro_weight}
        self.consistency_epochs = consistency_epochs
        self.pinv_ridge = pinv_ridge

    def forward(self, embeddings: Embeddings, epoch: int) -> dict[str, Tensor]:
        terms = {"clip": self.clip(embeddings), "sym": self.symmetry(embeddings)}
        if epoch >= self.consistency_epochs and (self.weights["mox"] or self.weights["fro"]):
            terms["mox"], terms["fro"] = self.extrapolation(embeddings)
        return {name: self.weights[name] * value for name, value in terms.items() if self.weights[name]}

    def clip(self, embeddings: Embeddings) -> Tensor:
        """L_CLIP with cross-dataset push-away terms (Eq. 10), summed over every (dataset, modality) anchor."""
        total = 0.0
        for ds, mods in embeddings.items():
            others = [f for other, omods in embeddings.items() if other != ds for f in omods.values()]
            for m, anchor in mods.items():
                scale = self.scale(m)
                parts = [info_nce(anchor, mods[n], scale) for n in mods if n != m]
                parts += [push_away(anchor, f, scale) for f in others]
                total = total + sum(parts) / len(parts)
        return total

    def symmetry(self, embeddings: Embeddings) -> Tensor:
        """L_Sym (Eqs. 11-12): CyCLIP cross-modal and in-modal symmetry for every observed pair."""
        total = 0.0
        for ds, m, n in modality_pairs(embeddings):
            x, y = embeddings[ds][m], embeddings[ds][n]
            total = total + cross_modal_cyclic(x, y) + in_modal_cyclic(x, y)
        return total

    def extrapolation(self, embeddings: Embeddings) -> tuple[Tensor, Tensor]:
        """(contrastive part of L_MOX, R_Fro) summed over every dataset and every modality it lacks (Eqs. 4-9)."""
        mox, fro = 0.0, 0.0
        for ds, mods in embeddings.items():
            for source, smods in embeddings.items():
                pivot = None if source == ds else shared_pivot(embeddings, ds, source)
                if pivot is None:
                    continue
                pinv = pivot_pinv(smods[pivot], self.pinv_ridge)
                for target in sorted(smods.keys() - mods.keys()):
                    pseudo = x_data(mods[pivot], pinv, smods[target])
                    candidates = F.normalize(pseudo, dim=1)  # Eq. 4's ⟨·,·⟩ is a cosine
                    mox = mox + sum(info_nce(f, candidates, self.scale(m)) for m, f in mods.items()) / len(mods)
                    fro = fro + frobenius(x_mod(mods[pivot], pinv, smods[target]), pseudo)
        if isinstance(mox, float):
            raise ValueError("MOX found no dataset pair linked by a pivot with a modality to extrapolate")
        return mox, fro
