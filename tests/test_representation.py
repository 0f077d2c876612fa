import csv
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from brokenbind.callbacks.representation import RepresentationMetrics, RepresentationRow, write_rows
from brokenbind.cli import cli
from brokenbind.metrics.representation import (
    all_pairs_retrieval,
    knn_accuracy,
    linear_probe_accuracy,
    zero_shot_accuracy,
)
from brokenbind.metrics.retrieval import retrieval_metrics

ROOT = Path(__file__).resolve().parents[1]


def clustered(n: int, classes: int = 5, dim: int = 16, seed: int = 0, spread: float = 2.0):
    """Unit embeddings around one random centre per class, and their labels; every seventh row unlabelled (-1)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99))
    emb = F.normalize(centres[labels] + spread * torch.randn(n, dim, generator=g), dim=1)
    labels[::7] = -1
    return emb, labels


def labelled(emb: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    keep = labels >= 0
    return emb[keep].numpy(), labels[keep].numpy()


TRAIN, TEST = clustered(300, seed=1), clustered(120, seed=2)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (20, 0.07), (7, 0.5), (500, 0.1)])
def test_knn_accuracy_equals_scikit_learn_with_the_same_vote(k, temperature):
    x, y = labelled(*TRAIN)
    xt, yt = labelled(*TEST)
    # solo-learn's and lightly's vote: weight exp(cosine / T); scikit-learn's cosine distance is 1 - cosine
    knn = KNeighborsClassifier(
        n_neighbors=min(k, len(x)), metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / temperature)
    )
    expected = float(np.mean(knn.fit(x.astype(np.float64), y).predict(xt.astype(np.float64)) == yt))
    assert knn_accuracy(*TRAIN, *TEST, k=k, temperature=temperature) == expected
    assert 0.2 < expected < 1  # neither chance nor trivial: the comparison means something


@pytest.mark.filterwarnings("error")  # a ConvergenceWarning fails
@pytest.mark.parametrize("C", [0.1, 1.0, 10.0])
def test_linear_probe_equals_a_logistic_regression_fitted_directly(C):
    x, y = labelled(*TRAIN)
    xt, yt = labelled(*TEST)
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=C, max_iter=1000).fit(scaler.transform(x), y)
    expected = float(np.mean(model.predict(scaler.transform(xt)) == yt))
    assert linear_probe_accuracy(*TRAIN, *TEST, C=C) == expected
    assert 0.2 < expected < 1


def test_zero_shot_equals_a_loop_over_queries_and_prototypes():
    (emb, labels), (queries, query_labels) = TRAIN, TEST
    prototypes = {}
    for c in sorted(set(labels.tolist()) - {-1}):
        mean = np.mean([emb[i].double().numpy() for i in range(len(emb)) if labels[i] == c], axis=0)
        prototypes[c] = mean / np.linalg.norm(mean)
    hits = total = 0
    for query, label in zip(queries.double().numpy(), query_labels.tolist(), strict=True):
        if label < 0:
            continue
        best = max(prototypes, key=lambda c: (float(query @ prototypes[c]), -c))  # ties: the smallest label
        hits, total = hits + (best == label), total + 1
    assert zero_shot_accuracy(emb, labels, queries, query_labels) == hits / total
    assert 0.2 < hits / total < 1


def test_unlabelled_rows_are_left_out_of_every_accuracy():
    (emb, labels), (queries, query_labels) = TRAIN, TEST
    keep, keep_q = labels >= 0, query_labels >= 0
    for accuracy in (knn_accuracy, linear_probe_accuracy, zero_shot_accuracy):
        assert accuracy(emb, labels, queries, query_labels) == accuracy(
            emb[keep], labels[keep], queries[keep_q], query_labels[keep_q]
        )


def test_a_test_class_without_training_rows_counts_as_a_miss():
    emb, labels = torch.eye(3), torch.tensor([0, 1, 1])
    queries, query_labels = torch.eye(3), torch.tensor([0, 1, 2])  # class 2 was never seen
    assert zero_shot_accuracy(emb, labels, queries, query_labels) == 2 / 3
    assert knn_accuracy(emb, labels, queries, query_labels, k=1) == 2 / 3


def test_all_pairs_equals_retrieval_metrics_per_pair():
    emb, labels = TEST
    g = torch.Generator().manual_seed(3)
    embeddings = {m: F.normalize(emb + 0.5 * torch.randn(emb.shape, generator=g), dim=1) for m in ("a", "b", "c")}
    ids = torch.randperm(len(emb), generator=g) + 1000
    positive = labels.clamp(min=0)
    pairs = all_pairs_retrieval(embeddings, ids, positive)
    assert set(pairs) == {(q, t) for q in "abc" for t in "abc" if q != t}
    for (q, t), metrics in pairs.items():
        expected = retrieval_metrics(embeddings[q], embeddings[t], ids, ids, positive, positive)
        assert metrics == {"mAP": expected["mAP"], "mAP_class": expected["mAP_class"]}
    # unlabelled rows: class mAP undefined (retrieval_metrics' NaN), instance mAP unchanged
    unlabelled = all_pairs_retrieval(embeddings, ids, labels)
    assert all(math.isnan(m["mAP_class"]) and m["mAP"] == pairs[pair]["mAP"] for pair, m in unlabelled.items())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: knn_accuracy(torch.ones(4, 3), torch.tensor([0, 1, 0, 1]), torch.ones(2, 5), torch.tensor([0, 1])),
         "need \\(N, d\\) training and \\(M, d\\) test embeddings"),
        (lambda: knn_accuracy(torch.ones(4, 3), torch.tensor([0, 1, 0]), torch.ones(2, 3), torch.tensor([0, 1])),
         "train_labels must be 1-D with one label per embedding row"),
        (lambda: linear_probe_accuracy(torch.ones(4, 3), torch.tensor([0, 0, -1, 0]), torch.ones(2, 3),
                                       torch.tensor([0, 1])), "hold 1 labelled class\\(es\\)"),
        (lambda: zero_shot_accuracy(torch.ones(4, 3), torch.tensor([0, 1, 0, 1]), torch.ones(2, 3),
                                    torch.tensor([-1, -1])), "none of its 2 scored rows has a label"),
        (lambda: knn_accuracy(*TRAIN, *TEST, k=0), "need k >= 1 and temperature > 0"),
        (lambda: knn_accuracy(*TRAIN, *TEST, temperature=0.0), "need k >= 1 and temperature > 0"),
        (lambda: linear_probe_accuracy(*TRAIN, *TEST, C=0.0), "need C > 0"),
        (lambda: all_pairs_retrieval({"a": TEST[0]}, torch.arange(120), TEST[1]), "at least two modalities"),
        (lambda: all_pairs_retrieval({"a": TEST[0], "b": TEST[0][:-1]}, torch.arange(120), TEST[1]),
         "embeddings of 'b' have"),
        (lambda: all_pairs_retrieval({"a": TEST[0], "b": TEST[0]}, torch.arange(119), TEST[1]),
         "ids and labels must be 1-D of the same length"),
    ],
)  # fmt: skip
def test_bad_inputs_are_refused_with_a_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_scoring_again_replaces_the_rows_of_the_same_identity(tmp_path):
    path = tmp_path / "representation.csv"
    row = RepresentationRow("e", "m", "0", "test", "best.ckpt", "d", "knn", "fou", 0.5)
    other = RepresentationRow("e", "m", "0", "test", "best.ckpt", "d", "mAP_class", "fou->pix", float("nan"))
    write_rows(path, [row, other])
    write_rows(path, [replace(row, value=0.75)])
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["metric"], r["value"]) for r in rows] == [("mAP_class", ""), ("knn", "0.75")]  # NaN: an empty cell


def test_a_fit_writes_representation_rows_equal_to_the_metrics_of_its_embeddings(tmp_path, monkeypatch, recwarn):
    monkeypatch.chdir(tmp_path)  # logs/ is relative to the working directory
    run = cli(["fit", "--config", str(ROOT / "experiments" / "two_dataset.yaml"), "--trainer.max_epochs=1",
               "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false",
               "--trainer.callbacks+=brokenbind.callbacks.RepresentationMetrics",
               "--trainer.callbacks.validation=true"])  # fmt: skip
    run_dir = Path(run.trainer.log_dir)
    with (run_dir / "representation.csv").open() as f:
        rows = list(csv.DictReader(f))
    # evaluation observes fou and pix in training; its val/test splits also carry zer, the hidden flow target
    expected = [("knn", "fou"), ("probe", "fou"), ("knn", "pix"), ("probe", "pix"),
                *(("zero_shot", pair) for pair in ("fou->pix", "fou->zer", "pix->fou", "pix->zer")),
                *((metric, f"{q}->{t}") for q in ("fou", "pix", "zer") for t in ("fou", "pix", "zer") if q != t
                  for metric in ("mAP", "mAP_class"))]  # fmt: skip
    assert [(r["stage"], r["weights"], r["dataset"], r["metric"], r["modality"]) for r in rows] == [
        *(("val", "epoch 0", "evaluation", *key) for key in expected),
        *(("test", "best-epoch000.ckpt", "evaluation", *key) for key in expected),
    ]
    assert {(r["experiment"], r["method"], r["seed"]) for r in rows} == {("two_dataset", "brokenbind", "0")}
    assert (run_dir / "pairs_evaluation_val.png").stat().st_size and (run_dir / "pairs_evaluation_test.png").is_file()
    assert not [w for w in recwarn if issubclass(w.category, ConvergenceWarning) or "representation" in str(w.message)]

    # the test rows are the metrics of the tested model's embeddings: training rows of fou and pix, test rows sorted
    # by instance id as gathered
    model, dm = run.model.eval(), run.datamodule

    @torch.no_grad()
    def embed(split: str, modalities: list[str]) -> dict[str, torch.Tensor]:
        return {m: model.model.project(m, f) for m, f in model.encode("evaluation", split, modalities).items()}

    train, test = embed("train", ["fou", "pix"]), embed("test", ["fou", "pix", "zer"])
    train_labels, split = dm.splits["evaluation"]["train"].label, dm.splits["evaluation"]["test"]
    order = torch.argsort(split.index)
    test, test_labels, ids = {m: e[order] for m, e in test.items()}, split.label[order], split.index[order]
    values = {("knn", m): knn_accuracy(train[m], train_labels, test[m], test_labels) for m in train}
    values |= {("probe", m): linear_probe_accuracy(train[m], train_labels, test[m], test_labels) for m in train}
    values |= {("zero_shot", f"{a}->{b}"): zero_shot_accuracy(train[a], train_labels, test[b], test_labels)
               for a in train for b in test if a != b}  # fmt: skip
    for (q, t), metrics in all_pairs_retrieval(test, ids, test_labels).items():
        values |= {(name, f"{q}->{t}"): value for name, value in metrics.items()}
    assert {(r["metric"], r["modality"]): float(r["value"]) for r in rows if r["stage"] == "test"} == values

    events = [EventAccumulator(str(f)).Reload() for f in sorted(run_dir.glob("events.out.tfevents.*"))]
    scalars = {tag for e in events for tag in e.Tags()["scalars"]}
    assert {"test/knn/evaluation/fou", "test/probe/evaluation/pix", "test/zero_shot/evaluation/pix->zer",
            "test/pairs/evaluation/zer->fou/mAP", "test/pairs/evaluation/zer->fou/mAP_class",
            "val/knn/evaluation/fou"} <= scalars  # fmt: skip
    assert "figures/pairs/evaluation" in {tag for e in events for tag in e.Tags()["images"]}


def test_without_labels_the_accuracies_are_missing_with_one_warning_and_retrieval_still_scored():
    emb, _ = TEST
    unlabelled = torch.full((len(emb),), -1)
    dm = SimpleNamespace(
        split_modalities=lambda dataset, split: ["a"] if split == "train" else ["a", "b"],
        splits={"d": {"train": SimpleNamespace(label=unlabelled)}},
    )
    model = SimpleNamespace(
        encode=lambda dataset, split, ms: {m: emb for m in ms}, model=SimpleNamespace(project=lambda m, f: f)
    )
    data = {"a": emb, "b": emb.flip(1), "index": torch.arange(len(emb)), "label": unlabelled}
    callback = RepresentationMetrics()
    with pytest.warns(UserWarning, match="accuracies on dataset 'd' \\(test split\\) are not reported") as warned:
        values = callback._dataset_values(model, dm, "test", "d", data)
        callback._dataset_values(model, dm, "test", "d", data)  # said once
    assert len(warned) == 1
    missing = {key for key, value in values.items() if math.isnan(value)}
    assert missing == {
        ("knn", "a"),
        ("probe", "a"),
        ("zero_shot", "a->b"),
        ("mAP_class", "a->b"),
        ("mAP_class", "b->a"),
    }
    assert values["mAP", "a->b"] == retrieval_metrics(emb, emb.flip(1), data["index"], data["index"])["mAP"]
