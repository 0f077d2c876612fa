"""Class mAP that cannot be computed is reported as missing, never as a number: through the CLI, on small manifests
(``test_bad_inputs.manifest_run``: datasets captions and sounds, flow emb->photo->sound scored on sounds)."""

import csv
from pathlib import Path

import pytest

from benchmarks.report import collect, summarise
from brokenbind.cli import cli

from .test_bad_inputs import SPLIT_OF_ROW, Rows, manifest_run
from .test_manifest import CUT_AUDIO

pytestmark = CUT_AUDIO

SHORT_RUN = ["--trainer.fast_dev_run=false", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"]
RUN = Path("logs") / "my_data" / "version_0"


def unlabelled_test_rows(rows: Rows) -> None:
    for i, row in enumerate(rows["sounds"]):
        if SPLIT_OF_ROW[i % 5] == "test":
            row["label"] = ""


def one_class(rows: Rows) -> None:
    for row in rows["sounds"]:
        row["label"] = "dog"


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def fit(tmp_path: Path, edit_rows, capsys, recwarn) -> tuple[list[dict], str, list[str]]:
    """results.csv rows, stdout, and the class mAP warnings of one short fit (test included)."""
    cli([*manifest_run(edit_rows=edit_rows)(tmp_path), *SHORT_RUN])
    rows = _rows(RUN / "results.csv")
    warned = [str(w.message) for w in recwarn if str(w.message).startswith("class mAP")]
    return rows, capsys.readouterr().out, warned


def test_unlabelled_test_rows_give_no_class_map(tmp_path, monkeypatch, capsys, recwarn):
    monkeypatch.chdir(tmp_path)
    rows, out, warned = fit(tmp_path, unlabelled_test_rows, capsys, recwarn)
    assert [(r["stage"], r["dataset"]) for r in rows] == [("val", "sounds"), ("test", "sounds")]
    assert 0 < float(rows[0]["map_class"]) <= 1  # val rows are labelled, in two classes
    assert rows[1]["map_class"] == "" and 0 < float(rows[1]["map_instance"]) <= 1
    assert warned == [
        "class mAP of ['emb->photo->sound'] on dataset 'sounds' (test split) is not reported (n/a in the table, an "
        "empty map_class cell in results.csv): 6 of its 6 rows have no label; label every row of the split to score "
        "classes"
    ]
    test_table = out.split("test retrieval")[1]
    assert test_table.splitlines()[3].endswith(" / n/a")  # the method's row: instance / class mAP
    report = summarise(collect(Path("logs")), "test").splitlines()[2]
    assert report.endswith("| n/a |")  # the missing class mAP is no number in the mean either

    # exported labels carry the manifests' class names (numbered in sorted order: bird 0, cat 1, dog 2)
    with next(RUN.glob("*/val_embeddings/metadata.tsv")).open() as f:  # TensorBoard's projector
        assert {tuple(r) for r in csv.reader(f, delimiter="\t")} == {
            ("dataset", "modality", "class"), *((d, m, c) for d in ["sounds"] for m in ["emb", "photo", "sound"]
                                                for c in ["dog", "bird"])
        }  # fmt: skip
    cli(["predict", "--config", "my_data.yaml", "--ckpt_path", str(RUN / "checkpoints" / "last.ckpt")])
    index = {split: _rows(RUN / "embeddings" / "sounds" / split / "index.csv") for split in ("train", "test")}
    assert list(index["train"][0]) == ["row", "id", "label", "class"]
    assert {(r["label"], r["class"]) for r in index["train"]} == {("2", "dog"), ("0", "bird")}
    assert {(r["label"], r["class"]) for r in index["test"]} == {("-1", "")}  # unlabelled


def test_a_split_of_one_class_gives_no_class_map(tmp_path, monkeypatch, capsys, recwarn):
    monkeypatch.chdir(tmp_path)
    rows, out, warned = fit(tmp_path, one_class, capsys, recwarn)
    assert [(r["stage"], r["map_class"]) for r in rows] == [("val", ""), ("test", "")]
    assert warned == [
        f"class mAP of ['emb->photo->sound'] on dataset 'sounds' ({stage} split) is not reported (n/a in the table, "
        "an empty map_class cell in results.csv): all 6 of its rows are in one class, so every item is relevant and "
        "class mAP would be 1.0 whatever the ranking"
        for stage in ("val", "test")
    ]
    assert out.count(" / n/a") == 2  # the val table (end of fit) and the test table


@pytest.mark.parametrize("cells", [["0.5", ""], ["", ""]])
def test_report_leaves_missing_class_map_out_of_means(tmp_path, cells):
    header = "experiment,method,seed,stage,dataset,dataset_flow,flow,emergent,map_instance,map_class\n"
    for seed, cell in enumerate(cells):  # a run directory per seed: the report counts a run once per flow
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "results.csv").write_text(
            header + f"e,m,{seed},test,b,a→b,x->y->z,True,0.25,{cell}\n"
        )
    report = summarise(collect(tmp_path), "test").splitlines()[2]
    assert report == f"| e | a→b | x->y->z* | m | 0,1 | 0.250 ± 0.000 | {'0.500 ± 0.000' if cells[0] else 'n/a'} |"
