"""BrokenBind (arXiv 2602.06451): L = L_CLIP (Eq. 10) + L_Sym (Eqs. 11-12) + L_MOX (Eqs. 4-9, 13-22), Algorithm 1.

The paper's recipe is every weight 1, the Moore-Penrose pseudo-inverse, summed R_Fro and push-away against every
modality of the other datasets (preset ``brokenbind_paper``). On our data it collapses once MOX starts (R_Fro of the
ill-conditioned pseudo-inverse swamps everything; README, "Choosing the default recipe"). The defaults here are the
recipe chosen on the validation split of suites of settings (``benchmarks/suites/validation.yaml``, ``prior_art.yaml``):
``pinv_ridge=0.1`` (bounded pseudo embeddings), ``fro_reduction="mean"`` (R_Fro per entry, so it no longer dwarfs the
contrastive terms), ``push_away="none"`` (no Eq. 10 cross-dataset partition terms: they pinned L_CLIP near log B,
cost instance mAP on every setting and most on three-dataset chains, and bought class mAP) and
``mox_subspace="orthogonal"`` (L_MOX only where the pseudo target differs from the query's own pivot: as extrapolated,
the pseudo target is closer to its row's pivot than to the real target, so the full term repeats L_CLIP) and, on
frozen backbones, ``transition="auto"``'s kernel map pivot → target fitted once on every supporting row, with L_MOX's
gradient stopped at its pseudo rows (``benchmarks/suites/transfer.yaml`` and ``validation.yaml``), and C-MCR's noise
on the real embeddings with that map (``embedding_noise``, arXiv 2305.14381 §3.2; ``validation.yaml``), and
``mox_weight=4`` (L_MOX weighed 4 against L_CLIP and L_Sym; ``validation.yaml``), and ``sym_centring=True`` (L_Sym on
each modality's rows centred on their batch mean; ``validation.yaml``) and ``transitive_weight=0.25`` (a quarter of
each retrieval score through the supporting dataset's rows, ASIF's; ``validation.yaml``); everything else as in the
paper, including MOX after half the run (``consistency_fraction=0.5``).
Choices the paper leaves open (arXiv 2602.06451 §3.2-3.3, Eq. 10, Appendix B) are made here:
- embeddings, pseudo-inverses and R_Fro use the L2-normalised, unscaled embeddings;
- each contrastive term uses the logit scale of its anchor (real) modality;
- L_CLIP(m, dataset) averages its terms (1/3B each in the two-dataset case): InfoNCE against each other modality of
  the same dataset and one push-away partition per modality of every other dataset. A dataset observing a single
  modality has no positive pair, so it is only a source of negatives;
- L_MOX(t, dataset) averages one-way InfoNCE from each real modality of the dataset to the pseudo embeddings of the
  missing modality t (real → pseudo only), and adds R_Fro between X-mod and X-data.
- N datasets: a dataset's missing modalities are reached along the shortest chain of datasets linked by shared
  modalities (Appendix B): pseudo embeddings of one step (X-data) act as the pivot of the next, as in Eqs. 20-21.
- Under DDP the pseudo embeddings come from the gathered global batch (the pseudo-inverse of the global pivot rows),
  computed identically on every rank; InfoNCE then scores this rank's real rows against all pseudo rows.
"""

import sys
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from brokenbind.errors import ConfigError, TrainableBackboneError
from brokenbind.graph import PairingGraph
from brokenbind.losses.clip import info_nce, push_away
from brokenbind.losses.cyclip import centred, cross_modal_cyclic, in_modal_cyclic
from brokenbind.losses.distributed import Batch
from brokenbind.losses.mox import frobenius, orthogonal_logits, recentre
from brokenbind.losses.precision import fp32
from brokenbind.methods.base import (
    BindingMethod,
    Embeddings,
    Encoder,
    Features,
    SharedNoise,
    check_non_negative,
    modality_pairs,
)
from brokenbind.methods.cmcr import NOISE_STD as CMCR_NOISE
from brokenbind.methods.extrapolation import Extrapolator, Pseudo
from brokenbind.methods.impute import PivotImputer
from brokenbind.methods.memory import EmbeddingMemory
from brokenbind.transfer import REGRESSORS, TRANSFERS, PivotMap, Regressor, Transfer

TRANSITIONS = ("auto", "linear", "kernel", "regressor")

# Where the default recipe departs from the paper: these arguments give BrokenBind exactly as written (the preset
# configs/methods/brokenbind_paper.yaml spells out every argument).
PAPER_RECIPE = {
    "transition": "linear",
    "pinv_ridge": 0.0,
    "fro_reduction": "sum",
    "push_away": "all",
    "mox_subspace": "full",
    "embedding_noise": 0.0,
    "mox_weight": 1.0,
    "sym_centring": False,
    "transitive_weight": 0.0,
}


class BrokenBind(BindingMethod):
    """BrokenBind for any number of datasets linked by shared (pivot) modalities.

    Args:
        clip_weight, sym_weight, mox_weight, fro_weight: weights of L_CLIP, L_Sym, the MOX contrastive part and R_Fro.
            All 1 in the paper; the default weighs L_MOX 4 (chosen on validation against 1 and 2: docs/choosing.md).
        consistency_fraction: the share of the run (``trainer.max_epochs``) spent in consistency pre-training
            (L_CLIP + L_Sym) before MOX switches on: MOX from epoch ``floor(fraction·max_epochs)``. 0.5 is the paper's
            25 of 50 and scales with the run, so a short run still gets its MOX phase; 0.2 gave the same validation mAP.
        consistency_epochs: an absolute epoch count instead (overrides ``consistency_fraction``; None by default).
        pinv_ridge: 0 is the paper's Moore-Penrose pseudo-inverse; > 0 regularises it (``losses.mox.pivot_pinv``);
            on validation, 0.03-0.3 gave the same mAP.
        fro_reduction: ``sum`` is Eq. 9's squared Frobenius norm; ``mean`` divides it by the number of entries (B·d),
            so its size no longer grows with batch and width.
        normalize_pseudo: L2-normalise pseudo embeddings before R_Fro and before they serve as the next pivot of a
            chain (the paper leaves them unnormalised; its cosine normalises them only inside InfoNCE).
        mox_contrast: which pseudo embeddings the MOX InfoNCE uses: ``x_data`` (Algorithm 1) or ``x_mod``.
        push_away: Eq. 10's cross-dataset push-away terms: ``all`` (paper), ``observed_pairs`` (only against a modality
            that is the anchor's own or observed with it in some dataset: never push apart two modalities that are
            meant to bind without ever co-occurring) or ``none`` (default: see the module docstring).
        push_away_weight: multiplies each push-away partition term inside L_CLIP's average (1 = the paper).
        transition: how pseudo embeddings are extrapolated from the other dataset's rows: ``linear`` (Eqs. 5-8, the
            ridge pseudo-inverse of one batch's pivot rows), ``kernel`` (a softmax over pivot cosines with
            ``kernel_temperature``, C-MCR's retrieval, arXiv 2305.14381 §3.2), ``regressor``: the transition fitted
            once, in closed form, on the backbone features of every training row of the supporting dataset (a map
            pivot → target of kind ``regressor``, ``methods.impute.PivotImputer``) rather than on one batch, carried
            to the dataset that lacks the target by ``transfer``; the target's head embeds the predicted features,
            and these are the pseudo embeddings (needs frozen backbones), or ``auto`` (default): ``regressor`` when
            the backbones of every pivot and target it maps are frozen, else ``linear``, decided at fit start and
            printed (a map fitted once cannot follow features that change while training). Chosen on validation
            (docs/choosing.md, "Carrying the transition across datasets"). Only ``linear`` has an X-mod form: R_Fro
            is 0 with the others.
        kernel_memory: with the ``kernel`` transition, the number of rows per dataset it retrieves from: this batch's
            rows and, up to that number, the newest rows of past batches in the learned space (detached; a queue,
            ``methods.memory``, as C-MCR's). 0 (default) reads this batch only. The queue is saved in checkpoints.
        transfer: with the ``regressor`` transition, the correction for the shift between the supporting and the
            scored dataset (``brokenbind.transfer``): ``none`` (default), ``importance`` (covariate-shift weights of
            the supporting rows), ``coral`` (second-order alignment of the scored pivot) or ``sinkhorn``
            (optimal-transport pseudo pairs).
        regressor: with the ``regressor`` transition, the map: ``kernel`` (default: Gaussian kernel ridge over the
            supporting rows) or ``ridge`` (linear).
        pseudo_centring: ``target_mean`` moves the pseudo embeddings' batch mean onto the real target's batch mean in
            the dataset they come from (C3's collapse, arXiv 2401.08567 §3), ``none`` leaves them as extrapolated;
            ``pseudo_noise`` adds Gaussian noise of that standard deviation per coordinate (C3's corrupt).
        embedding_noise: Gaussian noise of that standard deviation per coordinate on every real embedding entering
            L_CLIP, L_Sym and, as queries, L_MOX, re-normalised (C-MCR's semantic completion, arXiv 2305.14381 §3.2,
            which carried its lead on validation flows with a weak pivot); 0 adds none. None (default): C-MCR's 0.063
            when L_MOX's pseudo rows come from the fitted map (the regressor transition, which ``auto`` picks on
            frozen backbones), chosen there on validation against 0, 0.03 and 0.1; 0 with the batch transitions, where
            it cost class mAP on the real digits' validation split, with L_Sym and without (docs/choosing.md).
        mox_direction: ``real_to_pseudo`` (default, the paper's Eq. 4: one-way, each real row is the anchor and the
            pseudo rows are its candidates) or ``both``: the mean of that and the pseudo → real direction, each pseudo
            row the anchor against every real row (C-MCR's symmetric InfoNCE on its pseudo pairs, arXiv 2305.14381
            §3.3), in the same subspace and at the target modality's logit scale.
        mox_subspace: ``full`` (the paper) contrasts a query with the pseudo embeddings as they are; ``orthogonal``
            (default) only in the subspace orthogonal to the query row's own pivot embedding (after EmergentBridge,
            arXiv 2604.11043), so that L_MOX cannot repeat what L_CLIP already aligns through the pivot; the pivot's
            own term stays ``full``. Chosen on validation (benchmarks/suites/prior_art.yaml; the numbers are in
            docs/choosing.md).
        detach_pseudo: L_MOX treats the pseudo embeddings as constants (a stop-gradient on the target side, as
            SimSiam's, arXiv 2011.10566 §3): its gradient moves the real query rows only, and the target's head then
            learns from real rows alone. With the regressor transition the pseudo rows are the target head's
            embedding of *predicted* features, so without it that head also learns to embed predictions, which real
            rows at test time do not look like. None (default): with the regressor transition only (chosen on
            validation); the batch transitions keep the paper's gradient. R_Fro is unchanged. A number in [0, 1]
            stops that share of the gradient (True is 1, False 0): the pseudo rows get (1 − share) of it.
        sym_normalizer: CyCLIP's normaliser: ``batch`` is the paper's (1/N)·Σ over N² entries (it grows with the batch
            against InfoNCE's log N); ``pairs`` divides once more by N (the mean over entries).
        sym_centring: L_Sym on each modality's rows less their batch mean, re-normalised (``losses.cyclip.centred``;
            default) rather than on the raw embeddings (the paper's). Raw cosines make a modality whose rows all point
            one way (a pretrained text encoder on short templated sentences) pull its partner's rows together;
            chosen on validation (docs/choosing.md).
        transitive_weight: the share of a flow's retrieval score that goes through the training rows of a dataset
            observing the flow's pivot and target (ASIF's relative representations, arXiv 2210.01738, §3;
            ``metrics.transitive.blended``): the query's cosines to those rows' pivot embeddings against the
            target's to their target embeddings. 0.25 (default; chosen on validation against 0 and 0.5,
            docs/choosing.md) gives the rest to the embeddings' cosine; 0 scores by the cosine alone, as the paper.
            Below 1, flows that no dataset's rows reach in one hop (three-dataset chains) are scored by the cosine
            alone (at 1 they are refused, as by ``Transitive``). Training is unchanged; the embeddings ``brokenbind
            predict`` writes are the embeddings, not the blend.
        logit_scale, learn_logit_scale, modality_scales: the temperature (``losses.temperature``).
    """

    name = "brokenbind"
    # each ran as the paper before it existed
    added_arguments: ClassVar[dict[str, Any]] = {
        "transition": "linear",
        "mox_subspace": "full",
        "sym_centring": False,
        "transitive_weight": 0.0,
    }

    def __init__(
        self,
        clip_weight: float = 1.0,
        sym_weight: float = 1.0,
        mox_weight: float = 4.0,
        fro_weight: float = 1.0,
        consistency_epochs: int | None = None,
        consistency_fraction: float = 0.5,
        pinv_ridge: float = 0.1,
        fro_reduction: Literal["sum", "mean"] = "mean",
        normalize_pseudo: bool = False,
        mox_contrast: Literal["x_data", "x_mod"] = "x_data",
        push_away: Literal["all", "observed_pairs", "none"] = "none",
        push_away_weight: float = 1.0,
        sym_normalizer: Literal["batch", "pairs"] = "batch",
        sym_centring: bool = True,
        transitive_weight: float = 0.25,
        transition: Literal["auto", "linear", "kernel", "regressor"] = "auto",
        transfer: Transfer = "none",
        regressor: Regressor = "kernel",
        kernel_temperature: float = 0.05,
        kernel_memory: int = 0,
        pseudo_centring: Literal["none", "target_mean"] = "none",
        pseudo_noise: float = 0.0,
        embedding_noise: float | None = None,
        mox_subspace: Literal["full", "orthogonal"] = "orthogonal",
        mox_direction: Literal["real_to_pseudo", "both"] = "real_to_pseudo",
        detach_pseudo: bool | float | None = None,
        logit_scale: float = 10.0,
        learn_logit_scale: bool = False,
        modality_scales: dict[str, float] | None = None,
    ):
        super().__init__(logit_scale, learn_logit_scale, modality_scales)
        weights = {"clip": clip_weight, "sym": sym_weight, "mox": mox_weight, "fro": fro_weight}
        check_non_negative(**{f"{k}_weight": v for k, v in weights.items()}, pinv_ridge=pinv_ridge,
                           push_away_weight=push_away_weight, pseudo_noise=pseudo_noise,
                           embedding_noise=embedding_noise or 0.0)  # fmt: skip
        if not (clip_weight or sym_weight or mox_weight):  # R_Fro alone only makes transitions agree
            raise ConfigError(
                "clip_weight, sym_weight and mox_weight are all 0: no contrastive term is left and the run would not "
                "bind anything; give at least one of them a positive weight"
            )
        if consistency_epochs is not None and (isinstance(consistency_epochs, bool) or consistency_epochs < 0):
            raise ConfigError(f"consistency_epochs must be a non-negative number of epochs, got {consistency_epochs}")
        if not 0.0 <= consistency_fraction <= 1.0:
            raise ConfigError(f"consistency_fraction must lie in [0, 1], got {consistency_fraction}")
        choices = {
            "fro_reduction": (fro_reduction, ("sum", "mean")),
            "mox_contrast": (mox_contrast, ("x_data", "x_mod")),
            "push_away": (push_away, ("all", "observed_pairs", "none")),
            "sym_normalizer": (sym_normalizer, ("batch", "pairs")),
            "transition": (transition, TRANSITIONS),
            "transfer": (transfer, TRANSFERS),
            "regressor": (regressor, REGRESSORS),
            "pseudo_centring": (pseudo_centring, ("none", "target_mean")),
            "mox_subspace": (mox_subspace, ("full", "orthogonal")),
            "mox_direction": (mox_direction, ("real_to_pseudo", "both")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")
        self.weights = weights
        self.consistency_epochs, self.consistency_fraction = consistency_epochs, consistency_fraction
        self.pinv_ridge, self.fro_reduction, self.normalize_pseudo = pinv_ridge, fro_reduction, normalize_pseudo
        self.mox_contrast, self.push_away, self.push_away_weight = mox_contrast, push_away, push_away_weight
        self.sym_normalizer = sym_normalizer
        self.sym_centring = sym_centring
        if not 0.0 <= transitive_weight <= 1.0:
            raise ConfigError(f"transitive_weight must lie in [0, 1], got {transitive_weight}")
        self.transitive_weight = transitive_weight
        if not kernel_temperature > 0:
            raise ConfigError(f"kernel_temperature must be positive, got {kernel_temperature}")
        if transition != "linear" and mox_contrast == "x_mod":
            raise ConfigError(
                f"mox_contrast x_mod needs transition linear: the {transition} transition has no X-mod form"
            )
        if (transfer != "none" or regressor != "kernel") and transition in ("linear", "kernel"):
            raise ConfigError(
                f"transfer and regressor configure the regressor transition, not the {transition} one: set transition: "
                "regressor (or auto)"
            )
        self.transition, self.kernel_temperature = transition, kernel_temperature
        if isinstance(kernel_memory, bool) or kernel_memory < 0:
            raise ConfigError(f"kernel_memory must be a non-negative number of rows, got {kernel_memory}")
        if kernel_memory and transition != "kernel":
            raise ConfigError(f"kernel_memory is read by the kernel transition only, not the {transition} one")
        # a submodule only when used, as the noise: other checkpoints stay as before
        self.memory = EmbeddingMemory(kernel_memory) if kernel_memory else None
        self.pseudo_centring, self.pseudo_noise, self.mox_subspace = pseudo_centring, pseudo_noise, mox_subspace
        self.mox_direction = mox_direction
        if not 0 <= float(detach_pseudo or 0) <= 1:
            raise ConfigError(f"detach_pseudo must be true, false, null or a share in [0, 1], got {detach_pseudo}")
        self.detach_pseudo = detach_pseudo
        self.embedding_noise = embedding_noise
        # a submodule only when it may be used: checkpoints stay as before
        self.noise = SharedNoise() if pseudo_noise or embedding_noise is None or embedding_noise else None
        self.transfer, self.regressor = transfer, regressor
        # the regressor transition's maps, refitted by ``prepare`` at every fit start (a deterministic function of the
        # frozen features), never saved; ``auto`` extrapolates linearly until a fit finds the features frozen
        self.imputer = self.new_imputer() if transition == "regressor" else None
        self.extrapolator = (
            None
            if transition == "regressor"
            else Extrapolator(
                "linear" if transition == "auto" else transition,
                pinv_ridge,
                kernel_temperature,
                normalize_pseudo,
                pseudo_centring,
            )
        )

    def new_imputer(self) -> PivotImputer:
        """The regressor transition's maps, unfitted."""
        return PivotImputer("MOX", transfer=self.transfer, regressor=self.regressor)  # names its messages

    def prepare(self, encode: Encoder, graph: PairingGraph) -> None:
        super().prepare(encode, graph)
        if self.transition == "auto" and self.weights["mox"]:  # without L_MOX there is nothing to map
            self.imputer = self.new_imputer()
            try:
                self.imputer.fit(encode, graph)
            # a map fitted once cannot follow features that change while training
            except TrainableBackboneError as error:
                self.imputer = None
                rank_zero_info(
                    f"MOX: transition auto → linear (Eqs. 5-8 on each batch): {error.modalities} have "
                    "trainable or adapted backbones"
                )
                return
            self.extrapolator = None
            rank_zero_info(
                f"MOX: transition auto → regressor ({self.regressor} map pivot → target, fitted once on the "
                "frozen features of the supporting datasets)"
            )
        elif self.imputer is not None:
            self.imputer.fit(encode, graph)

    def complete(self, features: Features) -> Features:
        return features if self.imputer is None else self.imputer.complete(features)

    def pivot_map(self, dataset: str, pivot: str, target: str) -> PivotMap | None:
        return None if self.imputer is None else self.imputer.maps.get((dataset, pivot, target))

    @property
    def noise_std(self) -> float:
        """The noise on the real embeddings: ``embedding_noise``, or with None C-MCR's with the fitted map (known once
        ``prepare`` has chosen the transition) and none with a batch transition."""
        if self.embedding_noise is not None:
            return self.embedding_noise
        return CMCR_NOISE if self.imputer is not None else 0.0

    def mox_start(self, max_epochs: int | None) -> int:
        """The first epoch with MOX in a run of ``max_epochs`` (the trainer's, which the LightningModule passes with
        each batch): ``consistency_epochs`` if given, else ``floor(consistency_fraction·max_epochs)``. Without a run
        length (None, or Lightning's -1: no epoch limit) only the fractions 0 (MOX from the start) and 1 (never) work.
        """
        if self.consistency_epochs is not None:
            return self.consistency_epochs
        if max_epochs is None or max_epochs < 0:
            if self.consistency_fraction in (0.0, 1.0):  # no run length needed: MOX always or never
                return 0 if self.consistency_fraction == 0.0 else sys.maxsize
            raise ConfigError(
                "consistency_fraction needs the run length: train under a Trainer with max_epochs set, pass "
                "max_epochs, or give consistency_epochs"
            )
        return int(self.consistency_fraction * max_epochs + 1e-9)

    def diagnostics(self, embeddings: Embeddings) -> dict[str, Tensor]:
        """``cond/<dataset>/<pivot>``: the condition number of each dataset's pivot embeddings, i.e. of the
        pseudo-inverse MOX takes of them (B close to d makes it explode, and R_Fro with it)."""
        return {
            f"cond/{ds}/{pivot}": torch.linalg.cond(mods[pivot].detach().float())
            for pivot in self.graph.pivots
            for ds, mods in embeddings.items()
            if pivot in mods
        }

    def terms(self, batch: Batch, epoch: int, max_epochs: int | None) -> dict[str, Tensor]:
        terms = {}
        real = self.real(batch)
        if std := self.noise_std:
            real = self.noise.corrupt(real, std)
        bank = None if self.memory is None else self.memory.push(batch.full)  # filled before MOX starts, too
        if self.weights["clip"]:
            terms["clip"] = self.clip(real)
        if self.weights["sym"]:
            terms["sym"] = self.symmetry(real)
        if (self.weights["mox"] or self.weights["fro"]) and epoch >= self.mox_start(max_epochs):
            terms["mox"], terms["fro"] = self.extrapolation(batch, real, bank)
        return {name: self.weights[name] * value for name, value in terms.items() if self.weights[name]}

    def real(self, batch: Batch) -> Batch:
        """The batch without the modalities the regressor transition imputed (``complete``): L_CLIP and L_Sym see
        only observed pairs; the imputed embeddings are MOX's pseudo targets."""
        if self.imputer is None:
            return batch
        imputed = self.imputer.imputed()

        def keep(embeddings: Embeddings) -> Embeddings:
            return {
                ds: {m: e for m, e in mods.items() if m not in imputed.get(ds, ())} for ds, mods in embeddings.items()
            }

        return Batch(keep(batch.local), keep(batch.full), batch.offset)

    def _pushed(self, embeddings: Embeddings, anchor: str, other: str) -> bool:
        if self.push_away == "all":
            return True
        if self.push_away == "none":
            return False
        return anchor == other or any({anchor, other} <= mods.keys() for mods in embeddings.values())

    def clip(self, batch: Batch) -> Tensor:
        """L_CLIP with cross-dataset push-away terms (Eq. 10), summed over every (dataset, modality) anchor."""
        total = 0.0
        for ds, mods in batch.local.items():
            if len(mods) < 2:
                continue
            for m, anchor in mods.items():
                scale = self.scale(m)
                parts = [info_nce(anchor, batch.full[ds][n], scale, batch.offset) for n in mods if n != m]
                parts += [
                    self.push_away_weight * push_away(anchor, f, scale)
                    for o_ds, o_mods in batch.full.items()
                    if o_ds != ds
                    for o, f in o_mods.items()
                    if self._pushed(batch.full, m, o)
                ]
                total = total + sum(parts) / len(parts)
        return total

    def symmetry(self, batch: Batch) -> Tensor:
        """L_Sym (Eqs. 11-12): CyCLIP cross-modal and in-modal symmetry for every observed pair, on each modality's
        rows centred on their batch mean with ``sym_centring``."""
        total = 0.0
        for ds, m, n in modality_pairs(batch.local):
            (x, x_full), (y, y_full) = (batch.local[ds][m], batch.full[ds][m]), (batch.local[ds][n], batch.full[ds][n])
            if self.sym_centring:
                (x, x_full), (y, y_full) = centred(x, x_full), centred(y, y_full)
            rows = (x, y, x_full, y_full)
            value = cross_modal_cyclic(*rows) + in_modal_cyclic(*rows)  # (1/N)·Σ_jk, N = local rows
            total = total + (value / len(batch.full[ds][m]) if self.sym_normalizer == "pairs" else value)
        return total

    def extrapolation(self, batch: Batch, real: Batch, bank: Embeddings | None = None) -> tuple[Tensor, Tensor]:
        """(contrastive part of L_MOX, R_Fro), summed over every dataset and every modality it lacks: pseudo
        embeddings from ``batch`` (and ``bank``, the rows the transition reads: ``kernel_memory``; default this
        batch's), queries from ``real`` (its observed modalities, with ``embedding_noise``)."""
        mox, fro = 0.0, 0.0
        for ds, mods in real.local.items():
            for target, pseudo in self.pseudo_embeddings(batch.full, ds, bank).items():
                candidates = self.mox_candidates(pseudo, batch.full[pseudo.source][target])
                mox = mox + sum(self.mox_term(real, ds, m, target, pseudo.origin, candidates) for m in mods) / len(mods)
                if pseudo.mod is not None:
                    residual = frobenius(pseudo.mod, pseudo.data)
                    fro = fro + (residual / pseudo.data.numel() if self.fro_reduction == "mean" else residual)
        if isinstance(mox, float):
            raise ConfigError(
                "MOX found no dataset with a modality to extrapolate through a shared pivot;"
                " every dataset observes every modality it could "
                "reach (one fully paired dataset?): bind it with --method fabind or centrobind"
            )
        return mox, fro if isinstance(fro, Tensor) else torch.zeros_like(mox)

    @property
    def stopped_gradient(self) -> float:
        """The share of L_MOX's gradient stopped at the pseudo rows (``detach_pseudo``; None: all of it with the
        regressor transition, none otherwise)."""
        return float(self.imputer is not None if self.detach_pseudo is None else self.detach_pseudo)

    def mox_candidates(self, pseudo: Pseudo, real_target: Tensor) -> Tensor:
        """The unit pseudo embeddings L_MOX contrasts with (Eq. 4's ⟨·,·⟩ is a cosine): X-data or X-mod, detached
        (``stopped_gradient``), re-centred on the real target rows' mean and corrupted with noise when configured
        (C3). R_Fro and the next step of a chain use the pseudo embeddings as extrapolated."""
        contrast = pseudo.data if self.mox_contrast == "x_data" else pseudo.mod
        if stop := self.stopped_gradient:  # the same values; (1 − stop) of the gradient reaches the pseudo rows
            contrast = contrast.detach() if stop == 1 else contrast - stop * (contrast - contrast.detach())
        if self.pseudo_centring == "target_mean":
            contrast = recentre(contrast, real_target.detach().float().mean(0))
        if self.noise is not None:
            contrast = contrast + self.noise(contrast, self.pseudo_noise)
        return F.normalize(contrast, dim=1)

    def mox_term(self, real: Batch, dataset: str, modality: str, target: str, pivot: str, candidates: Tensor) -> Tensor:
        """InfoNCE from this rank's real rows of ``modality`` to every pseudo row of ``target`` (``candidates``; the
        positive of row i is row ``offset + i``) and, with ``mox_direction: both``, the mean with the pseudo → real
        direction. Cosines in the subspace orthogonal to each real row's own ``pivot`` embedding unless the query is
        the pivot itself or ``mox_subspace`` is ``full``."""
        local, full = real.local[dataset], real.full[dataset]
        rows = real.offset + torch.arange(len(local[modality]), device=local[modality].device)
        forward = self.scale(modality) * self.mox_cosines(local[modality], candidates, local[pivot], modality == pivot)
        loss = F.cross_entropy(forward, rows)
        if self.mox_direction == "real_to_pseudo":
            return loss
        own = candidates[real.offset : real.offset + len(rows)]  # this rank's pseudo rows, against every real row
        backward = self.scale(target) * self.mox_cosines(full[modality], own, full[pivot], modality == pivot).T
        return 0.5 * (loss + F.cross_entropy(backward, rows))

    @fp32
    def mox_cosines(self, query: Tensor, candidates: Tensor, pivot: Tensor, own_pivot: bool) -> Tensor:
        """(query rows, candidate rows) cosines: as they are for the pivot's own term or ``mox_subspace: full``, else
        after removing each query row's own pivot direction (``losses.mox.orthogonal_logits``)."""
        if self.mox_subspace == "full" or own_pivot:
            return query.float() @ candidates.float().T
        return orthogonal_logits(query, candidates, pivot)

    def pseudo_embeddings(self, full: Embeddings, dataset: str, bank: Embeddings | None = None) -> dict[str, Pseudo]:
        """Pseudo embeddings of every modality ``dataset`` lacks, by shortest chains of datasets.

        Extrapolated by ``extrapolator`` along the pairing graph; with the regressor transition they are already in
        ``full[dataset]`` (imputed by ``complete``).
        """
        if self.imputer is not None:
            return self.imputed_pseudo(full, dataset)
        return self.extrapolator(self.graph, full, dataset, bank)

    def imputed_pseudo(self, full: Embeddings, dataset: str) -> dict[str, Pseudo]:
        """The regressor transition's pseudo embeddings of ``dataset``: its imputed modalities, each with the real
        modality its chain of steps starts from and the first dataset observing it."""
        origin = {m: m for m in full[dataset]}
        out = {}
        for ds, pivot, target in self.imputer.steps:
            if ds == dataset:
                origin[target] = origin[pivot]
                source = self.graph.holders(target)[0]
                out[target] = Pseudo(full[dataset][target], None, origin[target], source)
        return out
