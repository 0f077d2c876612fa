"""Benchmarks (``make bench``): milliseconds per training step of each method, and of one retrieval evaluation.

A step is forward, loss, backward and optimiser step on one combined batch of the two_dataset experiment (mfeat,
64 rows per dataset), with MOX switched on. Timings are the median over repeats after warm-up, on this machine.
"""

import argparse
import statistics
import time

import torch

from brokenbind.methods import BrokenBind, CentroBind, FABind
from brokenbind.metrics.retrieval import retrieval_metrics
from brokenbind.module import BindingModule
from datamodules import MfeatDataModule

METHODS = {
    "brokenbind": lambda: BrokenBind(consistency_epochs=0),
    "brokenbind_paper": lambda: BrokenBind(consistency_epochs=0, pinv_ridge=0.0, fro_reduction="sum", push_away="all"),
    "centrobind": CentroBind,
    "fabind": FABind,
}


def median_ms(fn, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    dm = MfeatDataModule(
        datasets={"support": {"modalities": ["pix", "zer"]}, "evaluation": {"modalities": ["fou", "pix"]}},
        pivot="pix",
        flows=[{"dataset": "evaluation", "flow": "fou->pix->zer"}],
        batch_size=args.batch_size,
    )
    dm.setup()
    batch, _, _ = next(iter(dm.train_dataloader()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size} per dataset")
    for name, make in METHODS.items():
        torch.manual_seed(0)
        model = BindingModule(make())
        model.build(dm.modality_info())
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)

        def step(model=model, optimizer=optimizer) -> None:
            embeddings = {ds: model.embed(b["x"]) for ds, b in batch.items()}
            loss = sum(model.method(embeddings, epoch=0).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        print(f"train step  {name:<18} {median_ms(step, args.repeats):7.2f} ms")
    test = dm.splits["evaluation"]["test"]
    with torch.no_grad():
        embedded = model.embed(test.features)

    def evaluate() -> None:
        retrieval_metrics(embedded["fou"], embedded["zer"], test.index, test.index, test.label, test.label)

    print(f"retrieval   {len(test)} × {len(test)} gallery   {median_ms(evaluate, args.repeats):7.2f} ms")


if __name__ == "__main__":
    main()
