"""C-MCR / Ex-MCR: pseudo pairs through the shared modality by retrieval from a memory (kernel transition).

C-MCR (arXiv 2305.14381, §3.2-3.3) connects two contrastive spaces that share a modality b without any (a, c) pair:
for an embedding of b it retrieves the other modality from a memory as a softmax-weighted sum (temperature τ) of the
memory's embeddings, weighted by similarity ("semantic consistency"); it adds Gaussian noise to embeddings before
aligning them ("semantic completion"); it aligns the pseudo pairs across the spaces with InfoNCE ("inter-MCR") and
pulls paired embeddings of one space together with an L2 term ("intra-MCR", weight 0.1). Ex-MCR (arXiv 2310.08884)
builds the pseudo pairs densely, with each modality in turn as the query. In this project there is one space with a
head per modality, so the method becomes:

- ``clip``: symmetric InfoNCE on every pair a dataset observes (as ``FABind``);
- ``pseudo``: for each dataset and each modality t it lacks, a pseudo t for every row, retrieved through the shared
  pivot b from a memory of (b, t) rows of the dataset that holds them: t̃_i = normalize(Σ_k softmax_k(⟨b_i, b_k⟩/τ)
  t_k) (``losses.mox.kernel_transition``; detached: a target, as in C-MCR where the memory is frozen), then symmetric
  InfoNCE between each real modality of the row and t̃, averaged over those modalities. Every dataset does this for
  what it lacks, so the pairs run both ways (Ex-MCR's dense pairs); chains retrieve level by level;
- ``intra``: ``intra_weight`` × the mean squared distance between the embeddings of each observed pair (closing the
  modality gap inside each dataset's pairs, C-MCR's intra-MCR alignment).

Noise (``noise_std`` per coordinate, then re-normalised) is added to every embedding entering the ``pseudo`` and
``clip`` terms. What the sources leave open and what is chosen here: the memory is a queue of the last
``memory_size`` rows of every dataset (``methods.memory``: detached; the current batch enters before retrieval, so the
first step has a memory), saved in checkpoints for exact resumes; τ = 0.01 and noise standard deviation 0.063
(variance 0.004) follow the values reported for C-MCR by re-implementations (the paper's values were not verified);
the intra term uses squared distances.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from brokenbind.errors import ConfigError
from brokenbind.losses.clip import symmetric_info_nce
from brokenbind.losses.distributed import Batch
from brokenbind.losses.mox import kernel_transition
from brokenbind.methods.base import (
    BindingMethod,
    Embeddings,
    SharedNoise,
    check_non_negative,
    modality_pairs,
)
from brokenbind.methods.memory import EmbeddingMemory

NOISE_STD = 0.063  # C-MCR's noise standard deviation (variance 0.004; module docstring)


class CMCR(BindingMethod):
    """C-MCR-style binding in one space (module docstring).

    Args:
        memory_size: rows per dataset kept in the memory queue (the newest first).
        retrieval_temperature: τ of the softmax over pivot cosines.
        noise_std: standard deviation of the Gaussian noise added to embeddings per coordinate (0 disables it).
        pseudo_weight, intra_weight: weights of the pseudo-pair InfoNCE and of the intra-pair L2 term.
        logit_scale, learn_logit_scale, modality_scales: the InfoNCE temperature (``losses.temperature``).
    """

    name = "cmcr"

    def __init__(
        self,
        memory_size: int = 1024,
        retrieval_temperature: float = 0.01,
        noise_std: float = NOISE_STD,
        pseudo_weight: float = 1.0,
        intra_weight: float = 0.1,
        logit_scale: float = 10.0,
        learn_logit_scale: bool = False,
        modality_scales: dict[str, float] | None = None,
    ):
        super().__init__(logit_scale, learn_logit_scale, modality_scales)
        if memory_size < 1:
            raise ConfigError(f"memory_size must be a positive number of rows, got {memory_size}")
        if not retrieval_temperature > 0:
            raise ConfigError(f"retrieval_temperature must be positive, got {retrieval_temperature}")
        check_non_negative(noise_std=noise_std, pseudo_weight=pseudo_weight, intra_weight=intra_weight)
        self.memory_size, self.temperature, self.noise_std = memory_size, retrieval_temperature, noise_std
        self.pseudo_weight, self.intra_weight = pseudo_weight, intra_weight
        self.noise = SharedNoise() if noise_std else None
        self.memory = EmbeddingMemory(memory_size)
        self.register_load_state_dict_pre_hook(self._memory_of_older_checkpoints)

    @staticmethod
    def _memory_of_older_checkpoints(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
        """Checkpoints written before the memory became its own module (``methods.memory``) hold it as the method's
        own extra state."""
        if prefix + "_extra_state" in state_dict:
            state_dict[prefix + "memory._extra_state"] = state_dict.pop(prefix + "_extra_state")

    def terms(self, batch: Batch, epoch: int, max_epochs: int | None) -> dict[str, Tensor]:
        self.memory.push(batch.full)
        noisy = batch if self.noise is None else self.noise.corrupt(batch, self.noise_std)
        full, local = noisy.full, noisy.local
        rows = len(next(iter(next(iter(batch.local.values())).values())))
        own = slice(batch.offset, batch.offset + rows)
        pairs = modality_pairs(batch.local)
        if not pairs:
            raise ConfigError("cmcr needs at least one dataset observing two modalities")
        clip = sum(
            symmetric_info_nce(local[ds][m], local[ds][n], self.scale(m), self.scale(n), full[ds][m], full[ds][n],
                               batch.offset)
            for ds, m, n in pairs
        )  # fmt: skip
        pseudo = 0.0
        for ds, mods in local.items():
            for target, retrieved in self.retrieve(full, ds).items():
                pseudo = pseudo + sum(
                    symmetric_info_nce(f, retrieved[own], self.scale(m), self.scale(target), full[ds][m], retrieved,
                                       batch.offset)
                    for m, f in mods.items()
                ) / len(mods)  # fmt: skip
        if isinstance(pseudo, float):
            raise ConfigError(
                "cmcr found no dataset lacking a modality that a shared pivot links it to;"
                " every dataset observes every modality it could "
                "reach (one fully paired dataset?): bind it with --method fabind or centrobind"
            )
        intra = sum((batch.local[ds][m] - batch.local[ds][n]).pow(2).sum(1).mean() for ds, m, n in pairs) / len(pairs)
        terms = {"clip": clip, "pseudo": self.pseudo_weight * pseudo}
        if self.intra_weight:
            terms["intra"] = self.intra_weight * intra
        return terms

    def retrieve(self, full: Embeddings, dataset: str) -> dict[str, Tensor]:
        """Detached unit pseudo embeddings of every modality ``dataset`` lacks, for every row of the gathered batch,
        retrieved level by level along the shortest chains of datasets linked by a shared modality."""
        have = {m: f.detach() for m, f in full[dataset].items()}
        out: dict[str, Tensor] = {}
        while level := self.graph.next_level(dataset, have):
            for target, (source, pivot) in level.items():
                memory = self.memory.rows[source]
                retrieved = kernel_transition(have[pivot], memory[pivot], memory[target], self.temperature)
                out[target] = F.normalize(retrieved, dim=1)
            have.update(out)
        return out
