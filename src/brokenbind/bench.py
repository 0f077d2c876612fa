"""Benchmarks (``make bench``): milliseconds per training step of each method, of one retrieval evaluation, and
the feature cache's effect on epoch time with frozen pretrained backbones.

A step is forward, loss, backward and optimiser step on one combined batch of the two_dataset experiment (mfeat,
64 rows per dataset), with MOX switched on. Timings are the median over repeats after warm-up, on this machine.
The cache benchmark trains two epochs on the built-in digits with frozen EfficientNet-Lite0 (images) and MiniLM
(text): the first epoch encodes every instance, the second reads the cache.
"""

import argparse
import statistics
import time

import torch
from lightning.pytorch import Callback, Trainer

from brokenbind.methods import BrokenBind, CentroBind, FABind
from brokenbind.methods.brokenbind import PAPER_RECIPE
from brokenbind.metrics.retrieval import retrieval_metrics
from brokenbind.module import BindingModule
from datamodules import DigitsDataModule, MfeatDataModule

METHODS = {
    "brokenbind": lambda: BrokenBind(consistency_epochs=0),
    "brokenbind_paper": lambda: BrokenBind(consistency_epochs=0, **PAPER_RECIPE),
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
    for cached in (True, False):
        first, second = epoch_seconds(cached)
        print(
            f"epochs      frozen Lite0 + MiniLM, cache {'on ' if cached else 'off'}"
            f"  1st {first:6.2f} s  2nd {second:6.2f} s  ({first / second:.1f}× faster)"
        )


class EpochTimer(Callback):
    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def epoch_seconds(cached: bool) -> tuple[float, float]:
    """Seconds of the first and second training epoch on the digits with frozen pretrained backbones."""
    dm = DigitsDataModule(
        datasets={"first": {"modalities": ["image", "text"]}, "second": {"modalities": ["text", "image"]}},
        pivot="text",
        flows=[{"dataset": "first", "flow": "image->text->text"}],
        per_class=30,
        image_size=32,
        batch_size=32,
    )
    backbones = {
        "image": {
            "name": "timm",
            "model": "tf_efficientnet_lite0",
            "weights": "efficientnet_lite0_wheel",
            "image_size": 128,
        },
        "text": "minilm",
    }
    timer = EpochTimer()
    trainer = Trainer(
        max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(BindingModule(FABind(), backbones=backbones, feature_cache=cached), datamodule=dm)
    return timer.seconds[0], timer.seconds[1]


if __name__ == "__main__":
    main()
