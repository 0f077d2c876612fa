"""CentroBind (Jeong, Namgung, Kim, Kang, Chiang, Hero, "Anchors Aweigh! Sail for Optimal Unified Multi-Modal
Representations", arXiv 2410.02086): every modality is aligned to a per-sample centroid anchor of the sample's
modalities instead of to one fixed anchor modality (FABind).

Sources: the abstracts of arXiv 2410.02086 v1 and v2 and the reviews of its OpenReview submissions (ICLR 2025, forum
U2K4bQVWez, and a later, withdrawn one), and a third-party summary (sciencestack.ai TL;DR). The paper's body (its
equations and Theorem 3.1) could not be read; what is marked [unverified] is stated by none of these sources.

The objective, summed over datasets:

    L = Σ_m ½ [InfoNCE(z_m → a_m) + InfoNCE(a_m → z_m)],   a_m,i = centroid of sample i's embeddings

- Anchor: "centroid-based anchors generated from all available modalities" (abstract v1, v2), every modality with
  equal weight (ICLR 2025 review 1), recomputed from each batch (ICLR 2025 review 6; later review 2).
  ``anchor="all"`` (default) includes the modality being aligned, as the abstract's "all" reads;
  ``anchor="leave_one_out"`` uses the sample's other modalities [unverified: an ablation, not the paper's method]. The
  centroid is taken from the whole (gathered) batch, so it is identical on every rank.
- Loss: one InfoNCE alignment term per modality against its anchor, summed ("the loss function combines multiple
  InfoNCE loss terms", ICLR 2025 review 1); symmetric, as the TL;DR states. Weights between the terms: equal
  [unverified].
- ``renormalize`` (default True) [unverified]: L2-normalise the centroid so that it lies on the sphere like every
  embedding (a mean of unit vectors is shorter than 1, which would shrink its logits).
- ``detach_anchor`` (default True) [unverified]: stop the gradient through the anchor, so each modality moves towards
  the centroid instead of the centroid also moving towards it.
- Intra-modal term: none, as no source names one. The reviews place the paper's claim of intra-modal learning in a
  lower bound on this objective (Theorem 3.1), not in a separate loss term; here the modality's own embedding inside its
  anchor (``anchor="all"``) is what carries it. The augmented views a review mentions ("centroids of positive
  augmentation pairs", ICLR 2025 review 5) have no counterpart here: a method sees one embedding per modality.
- Temperature [unverified; "the effects of varying temperature parameters ... are not discussed", later review 1]:
  the project's ``LogitScale``.
- Missing modalities [unverified; two reviews ask how they would be handled]: each dataset's anchors use the
  modalities that dataset observes, so datasets with different modality sets work. A dataset observing one modality
  binds nothing (its centroid is its own embedding; it has no other modality to leave in) and adds no term; at least
  one dataset must observe two modalities.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from brokenbind.errors import ConfigError
from brokenbind.losses.clip import symmetric_info_nce
from brokenbind.losses.distributed import Batch
from brokenbind.methods.base import BindingMethod

ANCHORS = ("all", "leave_one_out")


class CentroBind(BindingMethod):
    name = "centrobind"

    def __init__(
        self,
        renormalize: bool = True,
        detach_anchor: bool = True,
        anchor: str = "all",
        logit_scale: float = 10.0,
        learn_logit_scale: bool = False,
        modality_scales: dict[str, float] | None = None,
    ):
        super().__init__(logit_scale, learn_logit_scale, modality_scales)
        if anchor not in ANCHORS:
            raise ConfigError(f"centrobind anchor must be one of {list(ANCHORS)}, got {anchor!r}")
        self.renormalize, self.detach_anchor, self.anchor = renormalize, detach_anchor, anchor

    def anchors(self, embeddings: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each modality's per-sample anchor in one dataset observing two or more modalities: the centroid of all its
        modalities (``all``), or of the others (``leave_one_out``)."""
        centroid_all = torch.stack(list(embeddings.values())).mean(0)
        anchors = {}
        for m in embeddings:
            if self.anchor == "all":
                centroid = centroid_all
            else:
                centroid = torch.stack([f for n, f in embeddings.items() if n != m]).mean(0)
            if self.renormalize:
                centroid = F.normalize(centroid, dim=-1)
            anchors[m] = centroid.detach() if self.detach_anchor else centroid
        return anchors

    def terms(self, batch: Batch, epoch: int, max_epochs: int | None) -> dict[str, Tensor]:
        binding = {ds: mods for ds, mods in batch.local.items() if len(mods) >= 2}
        if not binding:
            raise ConfigError("centrobind needs at least one dataset observing two modalities")
        total = 0.0
        for ds, mods in binding.items():
            anchors_full = self.anchors(batch.full[ds])  # from the whole batch: identical on every rank
            rows = slice(batch.offset, batch.offset + len(next(iter(mods.values()))))
            for m, f in mods.items():
                s = self.scale(m)
                total = total + symmetric_info_nce(
                    f, anchors_full[m][rows], s, s, batch.full[ds][m], anchors_full[m], batch.offset
                )
        return {"centro": total}
