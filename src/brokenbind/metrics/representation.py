"""Representation metrics of the field on frozen embeddings: weighted kNN accuracy (solo-learn, lightly), a linear
probe, zero-shot classification by class prototypes, and retrieval between every ordered pair of modalities.

The accuracies are top-1 over the labelled rows: a row with a negative label (unlabelled) neither votes, trains nor
forms a prototype, and is not scored. A test row whose class has no labelled training row counts as a miss.
"""

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import Tensor

from brokenbind.metrics.retrieval import retrieval_metrics


def accuracy_problem(train_labels: Tensor, test_labels: Tensor) -> str | None:
    """Why no accuracy can be computed from rows labelled ``train_labels`` (the side that is fitted: kNN neighbours,
    probe training rows, prototypes) for rows labelled ``test_labels`` (negative: unlabelled), or None."""
    classes = torch.unique(train_labels[train_labels >= 0])
    if len(classes) < 2:
        return (
            f"its {len(train_labels)} training rows hold {len(classes)} labelled class(es); a classifier needs at "
            "least two"
        )
    if not (test_labels >= 0).any():
        return f"none of its {len(test_labels)} scored rows has a label"
    return None


def _labelled(
    train_emb: Tensor, train_labels: Tensor, test_emb: Tensor, test_labels: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The labelled rows of both sides, after checking shapes and labels (``ValueError`` naming the problem)."""
    if train_emb.ndim != 2 or test_emb.ndim != 2 or train_emb.shape[1] != test_emb.shape[1]:
        raise ValueError(
            f"need (N, d) training and (M, d) test embeddings, got {tuple(train_emb.shape)} and {tuple(test_emb.shape)}"
        )
    for name, emb, labels in (("train", train_emb, train_labels), ("test", test_emb, test_labels)):
        if labels.shape != emb.shape[:1]:
            raise ValueError(f"{name}_labels must be 1-D with one label per embedding row, got {tuple(labels.shape)}")
    problem = accuracy_problem(train_labels, test_labels)
    if problem is not None:
        raise ValueError(f"no accuracy can be computed: {problem}")
    train, test = train_labels >= 0, test_labels >= 0
    return train_emb[train], train_labels[train], test_emb[test], test_labels[test]


@torch.no_grad()
def knn_accuracy(
    train_emb: Tensor,
    train_labels: Tensor,
    test_emb: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of the weighted kNN classifier of solo-learn and lightly on cosine similarity.

    Each test row takes its ``k`` most similar training rows (all of them when there are fewer); each neighbour votes
    for its class with weight ``exp(cosine / temperature)``, and the class with the largest summed weight wins (on
    an exact tie, the smallest label). Computed in float64, ``chunk_size`` test rows at a time.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    train_emb, train_labels, test_emb, test_labels = _labelled(train_emb, train_labels, test_emb, test_labels)
    classes, train_class = torch.unique(train_labels, return_inverse=True)
    train_unit = F.normalize(train_emb.double(), dim=1)
    k = min(k, len(train_unit))
    predicted = []
    for chunk in F.normalize(test_emb.double(), dim=1).split(chunk_size):
        similarity, neighbour = (chunk @ train_unit.T).topk(k, dim=1)
        votes = torch.zeros(len(chunk), len(classes), dtype=torch.float64, device=chunk.device)
        votes.scatter_add_(1, train_class[neighbour], (similarity / temperature).exp())
        predicted.append(classes[votes.argmax(dim=1)])  # argmax: the first maximum, the smallest label
    return (torch.cat(predicted) == test_labels).double().mean().item()


def linear_probe_accuracy(
    train_emb: Tensor,
    train_labels: Tensor,
    test_emb: Tensor,
    test_labels: Tensor,
    C: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Top-1 test accuracy of a multinomial logistic regression (scikit-learn, L2 penalty of inverse strength ``C``,
    lbfgs, at most ``max_iter`` iterations) fitted on the frozen training embeddings.

    The embeddings are standardised first (each dimension to zero mean, unit variance over the training rows): the
    coordinates of a unit vector shrink as 1/sqrt(d), so without it the same ``C`` would regularise a wider embedding
    more, and lbfgs converges in fewer iterations on standardised inputs. Deterministic (lbfgs draws no random
    numbers).
    """
    if C <= 0 or max_iter < 1:
        raise ValueError(f"need C > 0 and max_iter >= 1, got C={C}, max_iter={max_iter}")
    train_emb, train_labels, test_emb, test_labels = _labelled(train_emb, train_labels, test_emb, test_labels)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    # lbfgs steps are thin products (N x d by d x classes): BLAS threads beside torch's OpenMP threads wait for each
    # other longer than they compute; one thread was faster at every size tried, large probes included
    with threadpool_limits(1, user_api="blas"):
        probe.fit(_numpy(train_emb), _numpy(train_labels))
        predicted = probe.predict(_numpy(test_emb))
    return float(np.mean(predicted == _numpy(test_labels)))


@torch.no_grad()
def zero_shot_accuracy(
    prototype_emb: Tensor, prototype_labels: Tensor, query_emb: Tensor, query_labels: Tensor
) -> float:
    """Top-1 accuracy of classifying queries by their most cosine-similar class prototype.

    A class's prototype is the L2-normalised mean of the unit-normalised embeddings of its rows in ``prototype_emb``
    (one modality's training rows); each query (another modality) is assigned the class of the most similar
    prototype (on an exact tie, the smallest label). Computed in float64.
    """
    prototype_emb, prototype_labels, query_emb, query_labels = _labelled(
        prototype_emb, prototype_labels, query_emb, query_labels
    )
    classes, row_class = torch.unique(prototype_labels, return_inverse=True)
    members = F.one_hot(row_class, len(classes)).double()  # (N, classes)
    # each class's sum of unit rows; normalising a sum or its mean gives the same direction
    prototypes = F.normalize(members.T @ F.normalize(prototype_emb.double(), dim=1), dim=1)
    predicted = classes[(query_emb.double() @ prototypes.T).argmax(dim=1)]
    return (predicted == query_labels).double().mean().item()


def all_pairs_retrieval(
    embeddings: dict[str, Tensor], ids: Tensor, labels: Tensor, chunk_size: int = 1024
) -> dict[tuple[str, str], dict[str, float]]:
    """Instance mAP (``"mAP"``) and class mAP (``"mAP_class"``) of retrieving modality t from modality q over the same
    rows, for every ordered pair (q, t) of distinct modalities, from ``retrieval_metrics``: ``embeddings`` hold one
    (N, d) unit-norm tensor per modality whose row i is instance ``ids[i]`` of class ``labels[i]``. Class mAP is NaN
    where ``class_map_problem`` finds the labels undefined (unlabelled rows) or trivial (one class)."""
    if len(embeddings) < 2:
        raise ValueError(f"need the embeddings of at least two modalities, got {sorted(embeddings)}")
    if ids.shape != labels.shape or ids.ndim != 1:
        raise ValueError(
            f"ids and labels must be 1-D of the same length, got {tuple(ids.shape)}, {tuple(labels.shape)}"
        )
    for modality, emb in embeddings.items():
        if emb.shape[:1] != ids.shape:
            raise ValueError(f"embeddings of {modality!r} have {tuple(emb.shape)} rows, ids {len(ids)}: one per row")
    # ks=(): no recall@k, only the two mAPs
    return {
        (q, t): retrieval_metrics(embeddings[q], embeddings[t], ids, ids, labels, labels, ks=(), chunk_size=chunk_size)
        for q in embeddings
        for t in embeddings
        if q != t
    }


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()
