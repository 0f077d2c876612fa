"""Precomputed features as one memory-mapped ``.npy`` array per dataset and modality (``arrays``), joined to the
manifest by row or by id; and manifests read by pandas (CSV, JSONL, Parquet)."""

import csv
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from brokenbind.backbones import ModalityInfo, build_backbone
from brokenbind.cli import cli
from brokenbind.errors import ConfigError, DataError
from datamodules import ManifestDataModule
from datamodules.loaders import FeatureArray

from .test_manifest import CUT_AUDIO, ROWS, dm_args, make_data, make_dm, write_csv, write_jsonl

pytestmark = CUT_AUDIO

SPLIT_OF_ROW = ("train", "train", "train", "val", "test")


def sounds_with_array(root: Path, *, ids: bool = True, drop: str | None = None) -> tuple[dict, dict]:
    """``make_data`` files; sounds' ``emb`` moves from per-row .npy files into one array ``emb.npy`` (rows in reverse
    order, joined by ``emb_ids.txt``; or in manifest order without ids). Returns manifests and the ``arrays`` option."""
    rows = make_data(root)
    values = np.stack([np.load(root / row.pop("emb")) for row in rows["sounds"]])
    names = [row["id"] for row in rows["sounds"]]
    if ids:
        values, names = values[::-1], names[::-1]
        if drop is not None:
            keep = [i for i, n in enumerate(names) if n != drop]
            values, names = values[keep], [names[i] for i in keep]
    np.save(root / "emb.npy", values.astype(np.float32))
    (root / "emb_ids.txt").write_text("\n".join(names) + "\n")
    manifests = {name: write_csv(root / f"{name}.csv", r) for name, r in rows.items()}
    source = {"path": str(root / "emb.npy"), "ids": str(root / "emb_ids.txt")} if ids else str(root / "emb.npy")
    return manifests, {"sounds": {"emb": source}}


def test_array_items_equal_the_per_row_files(tmp_path):
    per_row = make_dm({n: write_csv(tmp_path / f"{n}.csv", r) for n, r in make_data(tmp_path).items()})
    per_row.setup()
    for ids in (True, False):
        manifests, arrays = sounds_with_array(tmp_path / f"arrays_{ids}", ids=ids)
        dm = make_dm(manifests, arrays=arrays)
        dm.setup()
        for split in ("train", "val", "test"):
            got, want = dm.splits["sounds"][split], per_row.splits["sounds"][split]
            assert len(got) == len(want)
            for i in range(len(got)):
                torch.testing.assert_close(got[i]["x"]["emb"], want[i]["x"]["emb"])
            items = list(range(len(got)))[::-1]  # a batch read at once (DataLoader's __getitems__) equals item by item
            for one, batched in zip([got[i] for i in items], got.__getitems__(items), strict=True):
                assert one["x"].keys() == batched["x"].keys()
                for m in one["x"]:
                    a, b = one["x"][m], batched["x"][m]
                    assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
                assert one["index"] == batched["index"] and one["label"] == batched["label"]
        stats = dm.modality_info()["emb"]
        inputs = per_row.modality_info()["emb"].train_inputs
        assert stats.train_inputs is None and stats.shape == (5,)
        torch.testing.assert_close(stats.train_stats[0], inputs.double().mean(0))
        torch.testing.assert_close(stats.train_stats[1], inputs.double().std(0))
        standardize = build_backbone("standardize", stats)
        reference = build_backbone("standardize", per_row.modality_info()["emb"])
        torch.testing.assert_close(standardize(inputs), reference(inputs))


def test_array_pickles_without_its_rows_and_reads_any_rows_in_the_order_asked(tmp_path):
    values = np.random.default_rng(0).standard_normal((4096, 64)).astype(np.float16)
    np.save(tmp_path / "big.npy", values)
    array = FeatureArray(tmp_path / "big.npy")
    assert len(pickle.dumps(array)) < 1000 < values.nbytes  # loader workers read the file themselves
    clone = pickle.loads(pickle.dumps(array))
    rows = np.array([7, 5, 6, 4095, 0, 5, 1, 2, 3])  # unsorted, repeated, runs, both ends
    assert torch.equal(clone.rows(rows), torch.from_numpy(values[rows].astype(np.float32)))
    assert clone.rows(np.array([], dtype=np.int64)).shape == (0, 64)
    with pytest.raises(IndexError, match="outside the 4096 rows"):
        array.rows(np.array([3, 4096]))


def _mapped_kb(path: Path) -> int:
    """Resident kB of this process's maps of ``path`` (Linux /proc/self/smaps)."""
    total, mine = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            mine = line.endswith(str(path))
        elif mine and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_reading_every_row_leaves_no_page_of_the_array_in_the_process(tmp_path):
    """Rows are read from the file, not through a memory map, whose touched pages (whole large folios around each
    random row) would stay in the reader's resident set: at a million rows, GBs per process."""
    values = np.random.default_rng(0).standard_normal((8192, 1024)).astype(np.float32)  # 32 MB
    np.save(tmp_path / "big.npy", values)
    array = FeatureArray(tmp_path / "big.npy")
    for rows in np.random.default_rng(1).permutation(8192).reshape(-1, 256):
        assert torch.equal(array.rows(rows), torch.from_numpy(values[rows]))
        assert _mapped_kb(tmp_path / "big.npy") == 0


def test_nan_row_is_named_at_access(tmp_path):
    values = np.zeros((3, 2), dtype=np.float32)
    values[1, 0] = np.nan
    np.save(tmp_path / "a.npy", values)
    with pytest.raises(DataError, match=r"a\.npy \(here\): array row 1 contains NaN"):
        FeatureArray(tmp_path / "a.npy", "here").rows(np.array([0, 1]), "here")


def arrays_error(tmp_path, **changes) -> str:
    manifests, arrays = sounds_with_array(tmp_path, **{k: v for k, v in changes.items() if k in ("ids", "drop")})
    edit = changes.get("edit")
    if edit is not None:
        edit(tmp_path, manifests, arrays)
    with pytest.raises((DataError, ConfigError)) as error:
        make_dm(manifests, arrays=arrays).setup()
    return str(error.value)


def test_a_row_whose_id_is_not_in_the_ids_file_is_named(tmp_path):
    message = arrays_error(tmp_path, drop="s5")  # row 6 is a val row (split_seed 0)
    assert message == (
        f"dataset 'sounds': manifest {tmp_path}/sounds.csv data row 6 (line 7), id 's5': no row in array "
        f"{tmp_path}/emb.npy (its id is not in {tmp_path}/emb_ids.txt), but every val row must carry ['emb', 'photo', "
        "'sound']"
    )


def test_row_count_must_match_without_ids(tmp_path):
    def shorter(root, manifests, arrays):
        np.save(root / "emb.npy", np.zeros((ROWS - 1, 5), dtype=np.float32))

    assert arrays_error(tmp_path, ids=False, edit=shorter).startswith(
        f"data.init_args.arrays.sounds.emb: array {tmp_path}/emb.npy has {ROWS - 1} rows, manifest "
        f"{tmp_path}/sounds.csv has {ROWS}: without an ids file, array row i is manifest row i"
    )


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda root, m, a: np.save(root / "emb.npy", np.zeros(ROWS)), r"expected a numeric \(rows, features\) array"),
        (lambda root, m, a: (root / "emb_ids.txt").write_text("s1\ns1\n" + "x\n" * (ROWS - 2)), "names id 's1' twice"),
        (lambda root, m, a: (root / "emb_ids.txt").write_text("s1\n"), f"names 1 ids for the {ROWS} rows"),
        (lambda root, m, a: (root / "emb.npy").unlink(), "array not found: .*working directory"),
        (lambda root, m, a: (root / "emb.npy").write_bytes(b"junk"), "not a .npy file"),
        (lambda root, m, a: _truncate(root / "emb.npy"), r"the file has \d+ bytes, its header promises \d+"),
        (
            lambda root, m, a: np.save(root / "emb.npy", np.asfortranarray(np.load(root / "emb.npy"))),
            r"stored column by column \(Fortran order\).*numpy.ascontiguousarray",
        ),
    ],
)
def test_broken_arrays_are_named(tmp_path, edit, message):
    assert re.search(message, arrays_error(tmp_path, edit=edit))


def test_array_and_manifest_column_together_is_an_error(tmp_path):
    def add_column(root, manifests, arrays):
        frame = pd.read_csv(manifests["sounds"], dtype=str)
        frame["emb"] = "npy/s0.npy"
        frame.to_csv(manifests["sounds"], index=False)

    assert "comes from data.init_args.arrays.sounds.emb, and manifest" in arrays_error(tmp_path, edit=add_column)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"sounds": {"photo": "x.npy"}}, "arrays hold features modalities; 'photo' is 'image'"),
        ({"nope": {"emb": "x.npy"}}, "arrays: unknown dataset 'nope'"),
        ({"captions": {"emb": "x.npy"}}, "dataset 'captions' does not use modality 'emb'"),
        ({"sounds": {"emb": "x.csv"}}, "must be a .npy array"),
        ({"sounds": {"emb": {"file": "x.npy"}}}, r"give a .npy path, or \{path: emb.npy, ids: emb_ids.txt\}"),
    ],
)
def test_array_config_errors(tmp_path, arrays, message):
    with pytest.raises(ConfigError, match=message):
        make_dm({"captions": tmp_path / "c.csv", "sounds": tmp_path / "s.csv"}, arrays=arrays)


def test_fingerprint_follows_the_array_file(tmp_path):
    manifests, arrays = sounds_with_array(tmp_path)
    before = make_dm(manifests, arrays=arrays).data_fingerprint()
    np.save(tmp_path / "emb.npy", np.ones((ROWS, 5), dtype=np.float32) * 2)
    assert make_dm(manifests, arrays=arrays).data_fingerprint() != before


def test_oracle_needs_the_hidden_modality_in_training_rows(tmp_path):
    rows = make_data(tmp_path)
    manifests = {n: write_csv(tmp_path / f"{n}.csv", r) for n, r in rows.items()}  # captions' sound is hidden
    for row in rows["captions"]:
        row["sound"] = ""
    write_csv(manifests["captions"], rows["captions"])
    with pytest.raises(DataError, match=r"the oracle \(--method oracle, data.init_args.oracle: true\) trains on"):
        make_dm(manifests, oracle=True).setup()


# -- training through the CLI on arrays only -------------------------------------------------------------------------
def write_feature_experiment(root: Path, n: int = 60) -> Path:
    """Datasets ``left`` (x, y; z only in val/test rows) and ``right`` (y, z), every modality one array: left's z
    array holds only its val/test rows, joined by id. Features share a class signal, so binding is learnable."""
    rng = np.random.default_rng(0)
    arrays = {}
    for name in ("left", "right"):
        labels = np.arange(n) % 3
        splits = [SPLIT_OF_ROW[i % 5] for i in range(n)]
        ids = [f"{name[0]}{i}" for i in range(n)]
        with (root / f"{name}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "label", "split"])
            writer.writerows(zip(ids, labels, splits, strict=True))
        arrays[name] = {}
        for m, width in (("x", 6), ("y", 8), ("z", 4)):
            if (name, m) in (("right", "x"),):
                continue
            values = rng.normal(size=(n, width)) + labels[:, None]
            keep = [i for i in range(n) if not (name == "left" and m == "z" and splits[i] == "train")]
            np.save(root / f"{name}_{m}.npy", values[keep].astype(np.float32))
            (root / f"{name}_{m}.txt").write_text("\n".join(ids[i] for i in keep) + "\n")
            arrays[name][m] = {"path": f"{name}_{m}.npy", "ids": f"{name}_{m}.txt"}  # relative: working directory
    config = {
        "data": {
            "class_path": "datamodules.ManifestDataModule",
            "init_args": {
                "manifests": {"left": "left.csv", "right": "right.csv"},
                "modalities": {"x": "features", "y": "features", "z": "features"},
                "arrays": arrays,
                "datasets": {"left": {"modalities": ["x", "y"]}, "right": {"modalities": ["y", "z"]}},
                "pivot": "y",
                "flows": [{"dataset": "left", "flow": "x->y->z"}],
                "batch_size": 8,
            },
        },
        "trainer": {"max_epochs": 1},
    }
    (root / "arrays.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root / "arrays.yaml"


def test_cli_trains_on_arrays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_feature_experiment(tmp_path)
    fitted = cli(
        ["fit", "--config", "arrays.yaml", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1"]
    )
    assert fitted.trainer.state.finished
    backbone = fitted.model.model.backbones["z"]
    assert type(backbone).__name__ == "Standardize"  # the default, fitted from the array's statistics
    with (tmp_path / "logs" / "arrays" / "version_0" / "results.csv").open() as f:
        results = list(csv.DictReader(f))
    assert [(r["stage"], r["flow"], r["emergent"]) for r in results] == [
        ("val", "x->y->z", "True"),
        ("test", "x->y->z", "True"),
    ]


# -- manifests read by pandas ----------------------------------------------------------------------------------------
def test_csv_jsonl_and_parquet_manifests_give_the_same_items(tmp_path):
    rows = make_data(tmp_path)
    for row in rows["sounds"]:
        row["label"] = {"cat": 0, "dog": 1, "bird": 2}[row["label"]]
    for row in rows["captions"]:
        row["label"] = {"cat": 0, "dog": 1, "bird": 2}[row["label"]]
    rows["sounds"][3]["label"] = None  # unlabelled: a null in JSONL and Parquet, an empty cell in CSV
    captions = write_csv(tmp_path / "captions.csv", rows["captions"])
    sounds_csv = write_csv(tmp_path / "sounds.csv", [{**r, "label": "" if r["label"] is None else r["label"]}
                                                      for r in rows["sounds"]])  # fmt: skip
    sounds_jsonl = write_jsonl(tmp_path / "sounds.jsonl", rows["sounds"])
    pd.DataFrame(rows["sounds"]).astype({"label": "Int64"}).to_parquet(tmp_path / "sounds.parquet")
    labels = []
    for sounds in (sounds_csv, sounds_jsonl, tmp_path / "sounds.parquet"):
        dm = make_dm({"captions": captions, "sounds": sounds})
        dm.setup()
        labels.append(dm.tables()["sounds"].labels.tolist())
        first = dm.splits["sounds"]["train"][0]
        assert first["x"]["emb"].shape == (5,)
    assert labels[0] == labels[1] == labels[2] and labels[0][3] == -1 and labels[0][4] == 1


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("m.csv", "id,photo,id\na,b,c\n", r"duplicate or empty column names \['id'\]"),
        ("m.csv", "id,photo\na,b,c\n", "cannot parse it as CSV: .*Expected 2 fields"),
        ("m.jsonl", '{"id": "a"}\n{oops\n', r"cannot parse it as JSON lines"),
        (
            "m.jsonl",
            '{"id": "a"}\n\n{"id": "b", "photo": [1, 2]}\n',
            r"m\.jsonl data row 2 \(line 3\): column 'photo' holds a list; expected a string or number",
        ),
    ],
)
def test_unreadable_manifests_are_named(tmp_path, name, text, message):
    from datamodules.manifest import read_manifest

    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message):
        read_manifest(tmp_path / name)


def test_blank_rows_are_skipped_and_cells_are_strings(tmp_path):
    from datamodules.manifest import read_manifest

    (tmp_path / "m.csv").write_text('id, photo ,label\n\na,img/a.png,3\n,,\n  \nb,"two\nlines",\nc,img/c.png,1\n')
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest.columns == ["id", "photo", "label"] and len(manifest) == 3
    assert manifest.column("label") == ["3", "", "1"] and manifest.cell(1, "id") == "b"
    # rows are named as an editor shows them: blank lines and a quoted cell's line break counted
    assert [manifest.row_name(row) for row in range(3)] == [
        "data row 1 (line 3)", "data row 2 (line 6)", "data row 3 (line 8)"
    ]  # fmt: skip
    (tmp_path / "m.jsonl").write_text('{"id": "a", "ok": true, "n": 2, "x": 0.5}\n\n{"id": "b"}\n')
    manifest = read_manifest(tmp_path / "m.jsonl")
    assert manifest.column("ok") == ["true", ""] and manifest.column("n") == ["2", ""]
    assert manifest.column("x") == ["0.5", ""]
    assert manifest.where(1) == f"manifest {tmp_path / 'm.jsonl'} data row 2 (line 3), id 'b'"


def test_dm_args_still_build(tmp_path):
    """The shared helper stays valid with the new option absent (arrays default to none)."""
    rows = make_data(tmp_path)
    args = dm_args({n: write_csv(tmp_path / f"{n}.csv", r) for n, r in rows.items()})
    assert ManifestDataModule(**args).arrays == {}
    assert ModalityInfo("features", (3,)).train_stats is None


def test_loader_workers_read_the_array(tmp_path):
    """Workers get the array without its rows (pickled path) and reopen the map: batches equal in-process ones."""
    manifests, arrays = sounds_with_array(tmp_path)
    dm = make_dm(manifests, arrays=arrays)
    dm.setup()
    train = dm.splits["sounds"]["train"]
    batches = [next(iter(DataLoader(train, batch_size=6, num_workers=w)))["x"]["emb"] for w in (0, 1)]
    assert batches[0].shape == (6, 5)
    torch.testing.assert_close(batches[0], batches[1])
