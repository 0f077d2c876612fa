"""Built-in tri-modal digits: handwritten images, spoken words and short descriptions, paired by class.

Made offline by ``prepare_data`` into ``cache_dir`` (only what is absent):

- image: scikit-learn's ``load_digits`` (1,797 8×8 scans, 174-183 per class), upsampled bilinearly to 32×32
  grayscale PNG (``images/NNNN.png``, NNNN = the load_digits index);
- audio: "zero" … "nine" spoken by ``espeak-ng`` with every combination of ``voices`` × ``speeds`` × ``pitches``
  (22.05 kHz int16 WAV, leading and trailing silence trimmed; ``audio/<word>_<voice>_s<speed>_p<pitch>.wav``);
- text: one of several templates ("a handwritten seven", "the digit 7", ...), written into the manifest itself.

There is no natural instance pairing between the three sources, so instances are built by class: each instance of
digit c is a triple (an image of c, a clip of c, a description of c), drawn from ``split_seed``. Within a dataset no
image and no clip repeats (hence the limits on ``per_class``); across datasets they are disjoint as far as the
pools allow. Descriptions come from a small template set and do repeat: text is a class-level modality here.
Every dataset's manifest (``manifests/<recipe>/<dataset>.csv``, recipe = hash of the generation settings) holds all
three columns; the datasets' ``modalities`` decide what training sees. The train/val/test split is
``ManifestDataModule``'s (stratified by digit, ``split_seed``).
"""

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from brokenbind.errors import ConfigError, DataError
from datamodules.loaders import read_wav
from datamodules.manifest import ManifestDataModule
from datamodules.manifest_rows import DatasetTable

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MODALITIES = {"image": "image", "audio": "audio", "text": "text"}
DEFAULT_VOICES = ("en-us+m3", "en-us+f2", "en+m1", "en+f4", "en-gb+m5", "en-us+f5")
DEFAULT_SPEEDS = (120, 145, 170, 195)
DEFAULT_PITCHES = (30, 45, 60, 75)
TEMPLATES = (
    "a handwritten {word}",
    "the digit {digit}",
    "number {word}",
    "a picture of the number {word}",
    "the numeral {digit}",
    "a scribbled {digit}",
    "someone wrote a {word}",
    "a {word} drawn by hand",
    "the handwritten digit {digit}",
    "a small grayscale {word}",
)
IMAGE_PIXELS = 32
SMALLEST_CLASS = 174  # digit 8 in load_digits
ESPEAK_HINT = "install it with `apt-get install -y espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS)"
RECIPE_VERSION = 1
SILENCE = 0.01  # |amplitude| below this (-40 dBFS) counts as silence when trimming clips
MARGIN_SECONDS = 0.01


def _atomic_target(path: Path) -> Path:
    """A temporary sibling of ``path``: written completely, then renamed, so a present file is always whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(handle)
    return Path(name)


def write_digit_png(pixels: np.ndarray, path: Path) -> None:
    """One load_digits image (8×8, values 0-16) as a 32×32 grayscale PNG, upsampled bilinearly."""
    image = Image.fromarray(np.round(pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
    tmp = _atomic_target(path)
    try:
        image.resize((IMAGE_PIXELS, IMAGE_PIXELS), Image.Resampling.BILINEAR).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def speak(espeak: str, word: str, voice: str, speed: int, pitch: int, path: Path) -> None:
    """Synthesise ``word`` with espeak-ng into ``path`` (int16 mono WAV), with silence trimmed at both ends."""
    raw, tmp = _atomic_target(path), _atomic_target(path)
    try:
        command = [espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), word]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0 or raw.stat().st_size == 0:
            detail = (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
            raise DataError(f"espeak-ng failed ({' '.join(command[:-3])} … {word}): {detail}")
        samples, rate = read_wav(raw, f"espeak-ng output for {word!r}, voice {voice!r}")
        loud = np.flatnonzero(np.abs(samples) > SILENCE)
        if not len(loud):
            raise DataError(
                f"espeak-ng produced silence for {word!r} with voice {voice!r}, speed {speed}, pitch {pitch}"
            )
        margin = round(MARGIN_SECONDS * rate)
        samples = samples[max(0, loud[0] - margin) : loud[-1] + margin + 1]
        with wave.open(str(tmp), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2").tobytes())
        os.replace(tmp, path)
    finally:
        raw.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text)


class DigitsDataModule(ManifestDataModule):
    """Handwritten digit images, spoken digits and digit descriptions as datasets paired by class.

    Modalities: ``image`` (32×32 grayscale PNG, resized to ``image_size``), ``audio`` (espeak-ng, needs the
    ``espeak-ng`` binary) and ``text``. See the module docstring for how instances are built.

    Args:
        per_class: instances of each digit in every dataset (10 × per_class rows per manifest). At most 174 (the
            smallest load_digits class) and at most len(voices) × len(speeds) × len(pitches) (distinct clips).
        voices, speeds, pitches: espeak-ng voices (``-v``), speeds in words per minute (``-s``) and pitches 0-99
            (``-p``); every combination gives one clip per word.
        cache_dir: where images, clips and manifests are made; default ``~/.cache/brokenbind/digits``.
        split_seed: seed of the instance sampling and of the train/val/test split.
        kwargs: ``ManifestDataModule``'s options except ``manifests``, ``modalities`` and ``root`` (derived here),
            and ``PairedDataModule``'s (datasets, pivot, flows, batch sizes, ...).
    """

    def __init__(
        self,
        per_class: int = 60,
        voices: tuple[str, ...] = DEFAULT_VOICES,
        speeds: tuple[int, ...] = DEFAULT_SPEEDS,
        pitches: tuple[int, ...] = DEFAULT_PITCHES,
        cache_dir: str | None = None,
        split_seed: int = 0,
        **kwargs,
    ):
        derived = sorted({"manifests", "modalities", "root"} & set(kwargs))
        if derived:
            raise ConfigError(f"DigitsDataModule derives {derived} itself; do not set them")
        self.voices, self.speeds, self.pitches = list(voices), [int(s) for s in speeds], [int(p) for p in pitches]
        if not (self.voices and self.speeds and self.pitches):
            raise ConfigError("voices, speeds and pitches must each name at least one value")
        if any(not v.strip() or v.startswith("-") for v in self.voices):
            raise ConfigError(f"invalid espeak-ng voice in {self.voices}")
        if min(self.speeds) < 1 or not all(0 <= p <= 99 for p in self.pitches):
            raise ConfigError(f"speeds must be positive and pitches in 0-99; got {self.speeds} and {self.pitches}")
        clips = len(set(self.voices)) * len(set(self.speeds)) * len(set(self.pitches))
        if not 1 <= per_class <= min(SMALLEST_CLASS, clips):
            raise ConfigError(
                f"per_class must lie in [1, {min(SMALLEST_CLASS, clips)}]: no image (174 of the rarest digit) and no "
                f"clip ({clips} voice × speed × pitch combinations) may repeat within a dataset; got {per_class}"
            )
        self.per_class = per_class
        self.cache_dir = Path(cache_dir if cache_dir is not None else "~/.cache/brokenbind/digits").expanduser()
        names = sorted(kwargs.get("datasets") or {})
        recipe = {
            "version": RECIPE_VERSION,
            "per_class": per_class,
            "voices": self.voices,
            "speeds": self.speeds,
            "pitches": self.pitches,
            "split_seed": split_seed,
            "datasets": names,
        }
        self.recipe = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
        manifests = {name: str(self.cache_dir / "manifests" / self.recipe / f"{name}.csv") for name in names}
        super().__init__(
            manifests=manifests, modalities=MODALITIES, root=str(self.cache_dir), split_seed=split_seed, **kwargs
        )

    # -- generation ------------------------------------------------------------------------------------------------
    def plan(self) -> dict[str, list[dict[str, object]]]:
        """The manifest rows of every dataset: a function of the generation settings only."""
        from sklearn.datasets import load_digits

        targets = load_digits().target
        combos = [
            (v, s, p)
            for v in dict.fromkeys(self.voices)
            for s in dict.fromkeys(self.speeds)
            for p in dict.fromkeys(self.pitches)
        ]
        rng = np.random.default_rng([self.split_seed, RECIPE_VERSION])
        names = sorted(self.manifests)
        rows: dict[str, list[dict[str, object]]] = {name: [] for name in names}
        for digit, word in enumerate(WORDS):
            images = rng.permutation(np.flatnonzero(targets == digit))
            clips = rng.permutation(len(combos))
            templates = rng.integers(len(TEMPLATES), size=len(names) * self.per_class)
            for k, name in enumerate(names):
                for j in range(k * self.per_class, (k + 1) * self.per_class):
                    image = int(images[j % len(images)])
                    voice, speed, pitch = combos[clips[j % len(combos)]]
                    rows[name].append(
                        {
                            "image": f"images/{image:04d}.png",
                            "audio": f"audio/{word}_{_slug(voice)}_s{speed}_p{pitch}.wav",
                            "text": TEMPLATES[templates[j]].format(word=word, digit=digit),
                            "label": digit,
                            "digits_index": image,
                            "voice": voice,
                            "speed": speed,
                            "pitch": pitch,
                        }
                    )
        return rows

    def prepared(self) -> bool:
        return all(Path(path).is_file() for path in self.manifests.values())

    def prepare_data(self) -> None:
        """Make the images, clips and manifests this configuration needs, skipping whatever already exists."""
        if self.prepared():
            return
        plan = self.plan()
        rows = [row for dataset_rows in plan.values() for row in dataset_rows]
        images = {str(r["image"]): int(r["digits_index"]) for r in rows}
        missing_images = {p: i for p, i in images.items() if not (self.cache_dir / p).is_file()}
        if missing_images:
            from sklearn.datasets import load_digits

            pixels = load_digits().images
            for path, index in sorted(missing_images.items()):
                write_digit_png(pixels[index], self.cache_dir / path)
        clips = {str(r["audio"]): (WORDS[int(r["label"])], r["voice"], r["speed"], r["pitch"]) for r in rows}
        missing_clips = sorted(p for p in clips if not (self.cache_dir / p).is_file())
        if missing_clips:
            espeak = shutil.which("espeak-ng")
            if espeak is None:
                raise DataError(f"the digits audio is synthesised with espeak-ng, which is not on PATH: {ESPEAK_HINT}")
            with ThreadPoolExecutor(max_workers=4) as pool:
                jobs = [pool.submit(speak, espeak, *clips[p], self.cache_dir / p) for p in missing_clips]
                try:
                    for job in jobs:
                        job.result()
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
        columns = ["image", "audio", "text", "label", "digits_index", "voice", "speed", "pitch"]
        for name, dataset_rows in plan.items():
            path = Path(self.manifests[name])
            tmp = _atomic_target(path)
            try:
                with tmp.open("w", newline="", encoding="utf-8") as f:
                    writer = csv.DictWriter(f, fieldnames=columns)
                    writer.writeheader()
                    writer.writerows(dataset_rows)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    def tables(self) -> dict[str, DatasetTable]:
        if self._tables is None and not self.prepared():
            self.prepare_data()  # setup() without prepare_data() (scripts, tests): make the data first
        return super().tables()
