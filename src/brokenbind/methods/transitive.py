"""Transitive retrieval: fine-tuning, then a training-free score through the pivot (ASIF, arXiv 2210.01738).

Training is ``FABind``'s. At evaluation a flow's query is not compared with the target directly: both are compared
with the anchor rows of a dataset observing the flow's pivot and target (its training split), the query with the
anchors' pivot embeddings, the target with the same anchors' target embeddings, and the two relative representations
are compared (``metrics.transitive``; the method declares ``transitive_weight = 1`` and the evaluation,
``callbacks.emergent``, computes them with its ``top_k`` and ``power``). Nothing learns query→target; this is what
retrieval through the pivot alone gives. ASIF leaves the anchor set open (its anchors are a paired dataset);
``top_k`` (800) and ``power`` (8) are the values of its code.
Flows whose pivot and target no single dataset observes (three-dataset chains) are refused: the relative
representation has no second hop.
"""

from brokenbind.errors import ConfigError
from brokenbind.methods.fabind import FABind


class Transitive(FABind):
    name = "transitive"
    transitive_weight = 1.0

    def __init__(
        self,
        top_k: int = 800,
        power: float = 8.0,
        anchor: str | None = None,
        logit_scale: float = 10.0,
        learn_logit_scale: bool = False,
        modality_scales: dict[str, float] | None = None,
    ):
        super().__init__(anchor, logit_scale, learn_logit_scale, modality_scales)
        if top_k < 1 or not power > 0:
            raise ConfigError(f"top_k must be >= 1 and power positive, got top_k={top_k}, power={power}")
        self.top_k, self.power = top_k, power
