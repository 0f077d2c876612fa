"""One loader per modality kind: files named in a manifest become the tensors the backbones expect.

Conventions (the backbones rely on them):

- image: float32 tensor (C, H, W) in [0, 1], resized bilinearly (with antialiasing) to a fixed size; C is 1 for
  grayscale files (L, 1, I, I;16, F: depth and thermal maps included) and 3 for colour files, unless ``channels``
  forces 1 (ITU-R 601 luma) or 3 (gray replicated). Alpha is dropped. 16-bit files are scaled by 65535, 32-bit
  integer files are assumed to hold 16-bit values (what PNG/TIFF depth maps decode to) and float files are clipped.
- audio: float32 mono waveform of exactly ``round(seconds * sample_rate)`` samples: PCM WAV (uint8, int16, int24,
  int32) read with the standard library, stereo averaged, resampled by linear interpolation when the file's rate
  differs (no anti-alias filter: fine for speech at similar rates, not a substitute for a proper resampler), then
  cropped at the end or zero-padded at the end. A file without samples is an error.
- features: a ``.npy`` array, flattened to a float32 1-D tensor; non-finite values are an error.
- text: the manifest cell itself, as a str.

A missing or unreadable file raises ``DataError`` naming the file and ``context`` (the caller passes the manifest
row), never a silent skip.
"""

import io
import os
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from brokenbind.errors import DataError

KINDS = ("image", "audio", "text", "features")
FILE_KINDS = ("image", "audio", "features")
GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}
LUMA = torch.tensor([0.299, 0.587, 0.114])
NPY_MAGIC = b"\x93NUMPY"


class Member:
    """One member of an uncompressed tar archive (a WebDataset shard), read by the offset of its data: a path-like the
    loaders open like a file. ``str()`` is ``source:member`` (``source``: where the shard came from, by default the
    local ``shard`` itself), what errors name."""

    def __init__(self, shard: Path, name: str, offset: int, size: int, source: str | None = None):
        self.shard, self.name, self.offset, self.size = shard, name, offset, size
        self.source = str(shard) if source is None else source

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"

    def is_file(self) -> bool:
        return self.shard.is_file()

    def stat(self) -> os.stat_result:
        return self.shard.stat()

    def read_bytes(self, limit: int | None = None) -> bytes:
        """The member's bytes, or its first ``limit`` bytes."""
        with self.shard.open("rb") as f:
            f.seek(self.offset)
            return f.read(self.size if limit is None else min(limit, self.size))

    def open(self, mode: str = "rb") -> io.BytesIO:
        if mode != "rb":
            raise ValueError(f"tar members open for reading only, not {mode!r}")
        return io.BytesIO(self.read_bytes())


def _where(path: "str | Path | Member", context: str) -> str:
    return f"{path}" + (f" ({context})" if context else "")


def _require_file(path: "str | Path | Member", context: str) -> "Path | Member":
    path = path if isinstance(path, Member) else Path(path)
    if not path.is_file():
        raise DataError(f"file missing: {_where(path, context)}")
    return path


def _image_array(image: Image.Image) -> np.ndarray:
    """The pixels as float32 (H, W, C) in [0, 1], with C = 1 for grayscale modes and 3 otherwise."""
    mode = image.mode
    if mode.startswith("I;16"):
        return (np.asarray(image, dtype=np.float32) / 65535.0)[..., None]
    if mode == "I":
        return np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)[..., None]
    if mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)[..., None]
    if mode in GRAY_MODES:
        return (np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[..., None]
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path: str | Path, channels: int | None, size: int | tuple[int, int], context: str = "") -> Tensor:
    """An image file as float32 (C, H, W) in [0, 1] at ``size`` (an int gives a square); see the module docstring."""
    path = _require_file(path, context)
    if channels not in (None, 1, 3):
        raise DataError(f"image channels must be 1, 3 or None (keep the file's), got {channels}")
    height, width = (size, size) if isinstance(size, int) else size
    try:
        with Image.open(path.open("rb") if isinstance(path, Member) else path) as image:
            image.load()
            pixels = _image_array(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(
            f"cannot read image {_where(path, context)}: {error}; replace the file or remove its row"
        ) from error
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    if channels == 1 and x.shape[0] == 3:
        x = (x * LUMA[:, None, None]).sum(0, keepdim=True)
    elif channels == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if tuple(x.shape[1:]) != (height, width):
        x = F.interpolate(x[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp(0.0, 1.0).contiguous()


def _pcm_to_float(frames: bytes, width: int) -> np.ndarray:
    if width == 1:
        return (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if width == 3:
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float32) / float(1 << 23)
    if width == 4:
        return (np.frombuffer(frames, dtype="<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    raise ValueError(f"unsupported sample width of {width} bytes")


def resample_linear(wave_: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Linear-interpolation resampling (no low-pass filter): sample k of the output is read at time k / target_rate."""
    if rate == target_rate or len(wave_) == 0:
        return wave_
    length = max(1, round(len(wave_) * target_rate / rate))
    positions = np.arange(length, dtype=np.float64) * (rate / target_rate)
    return np.interp(positions, np.arange(len(wave_), dtype=np.float64), wave_).astype(np.float32)


def fix_length(wave_: np.ndarray, length: int) -> np.ndarray:
    """Crop at the end or zero-pad at the end to exactly ``length`` samples."""
    if len(wave_) >= length:
        return wave_[:length]
    return np.concatenate([wave_, np.zeros(length - len(wave_), dtype=np.float32)])


WAV_ERRORS = (wave.Error, EOFError, OSError, ValueError)
WAV_HEADER_BYTES = 1 << 16  # more than any WAV header with its metadata chunks


def _wav_error(path: "Path | Member", context: str, error: Exception) -> DataError:
    return DataError(
        f"cannot read WAV {_where(path, context)}: {error}; PCM WAV files (uint8, int16, int24, int32) are "
        "supported: convert the file or remove its row"
    )


def _check_wav(path: "Path | Member", context: str, rate: int, samples: int) -> None:
    if rate <= 0:
        raise DataError(f"cannot read WAV {_where(path, context)}: sample rate {rate}")
    if samples == 0:
        raise DataError(
            f"WAV {_where(path, context)} holds no audio (zero samples); replace the file or remove its row"
        )


def read_wav(path: str | Path, context: str = "") -> tuple[np.ndarray, int]:
    """A PCM WAV file as a float32 mono waveform in [-1, 1] (channels averaged) and its sample rate."""
    path = _require_file(path, context)
    try:
        with wave.open(path.open("rb") if isinstance(path, Member) else str(path), "rb") as wav:
            width, n_channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
        usable = len(frames) - len(frames) % (width * n_channels)
        samples = _pcm_to_float(frames[:usable], width).reshape(-1, n_channels).mean(axis=1)
    except WAV_ERRORS as error:
        raise _wav_error(path, context, error) from error
    _check_wav(path, context, rate, len(samples))
    return samples.astype(np.float32), rate


def wav_seconds(path: str | Path, context: str = "") -> float:
    """The length of a WAV file in seconds from its header alone (its samples are not read); the errors of
    ``read_wav``."""
    path = _require_file(path, context)
    try:
        source = io.BytesIO(path.read_bytes(WAV_HEADER_BYTES)) if isinstance(path, Member) else str(path)
        with wave.open(source, "rb") as wav:
            frames, rate = wav.getnframes(), wav.getframerate()
    except WAV_ERRORS as error:
        raise _wav_error(path, context, error) from error
    _check_wav(path, context, rate, frames)
    return frames / rate


def load_wav(path: str | Path, sample_rate: int, seconds: float, context: str = "") -> Tensor:
    """A WAV file as a float32 mono waveform of ``round(seconds * sample_rate)`` samples; see the module docstring."""
    samples, rate = read_wav(path, context)
    samples = fix_length(resample_linear(samples, rate, sample_rate), round(seconds * sample_rate))
    return torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))


def load_npy(path: str | Path, context: str = "") -> Tensor:
    """A ``.npy`` feature file as a float32 1-D tensor (flattened)."""
    path = _require_file(path, context)
    with path.open("rb") as f:
        magic = f.read(len(NPY_MAGIC))
    if magic != NPY_MAGIC:  # np.load would try pickle and advise allow_pickle=True: never what a feature file needs
        raise DataError(
            f"cannot read features {_where(path, context)}: not a .npy file (no NumPy header); write it with numpy.save"
        )
    try:
        array = np.load(path.open("rb") if isinstance(path, Member) else path, allow_pickle=False)
        if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"expected a numeric array, got {getattr(array, 'dtype', type(array))}")
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"cannot read features {_where(path, context)}: {error}") from error
    array = np.asarray(array, dtype=np.float32).reshape(-1)
    if not np.isfinite(array).all():
        raise DataError(f"features {_where(path, context)} contain NaN or infinite values")
    return torch.from_numpy(array)


def load_text(value: object, context: str = "") -> str:
    """Text modalities are the manifest cell itself."""
    if value is None:
        raise DataError(f"empty text ({context})" if context else "empty text")
    return str(value)


class FeatureArray:
    """One ``.npy`` array of feature vectors (N, D), read row by row from the file (``os.preadv`` into the result): an
    array larger than memory is fine, and a process's resident memory does not grow with the rows it has read (a
    memory map keeps every page it touched resident, whole large folios around each random row: at a million rows the
    arrays' pages filled several GB per process). The kernel's page cache still keeps the rows, shared by every
    process and reclaimable. Pickles as its path and header (loader workers read the file themselves)."""

    def __init__(self, path: str | Path, context: str = ""):
        self.path = _require_file(path, context)
        where = _where(self.path, context)
        with self.path.open("rb") as f:
            if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise DataError(
                    f"cannot read features {where}: not a .npy file (no NumPy header); write it with numpy.save"
                )
            f.seek(0)
            try:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran_order, dtype = read_header(f)
            except (OSError, ValueError, EOFError) as error:
                raise DataError(f"cannot read features {where}: {error}") from error
            self.offset = f.tell()
        if len(shape) != 2 or not np.issubdtype(dtype, np.number):
            raise DataError(
                f"features {where}: expected a numeric (rows, features) array, got shape {shape} of {dtype}"
            )
        if fortran_order and shape[0] > 1 and shape[1] > 1:
            raise DataError(
                f"features {where}: the array is stored column by column (Fortran order), so a row is not contiguous; "
                "save it row by row: numpy.save(path, numpy.ascontiguousarray(features))"
            )
        self.shape, self.dtype = tuple(shape), dtype
        self._row_bytes = dtype.itemsize * shape[1]
        size, needed = self.path.stat().st_size, self.offset + shape[0] * self._row_bytes
        if size < needed:
            raise DataError(
                f"cannot read features {where}: the file has {size} bytes, its header promises {needed} "
                "(a truncated or still-written file)"
            )

    def rows(self, rows: np.ndarray, context: str | Callable[[int], str] = "") -> Tensor:
        """Rows ``rows`` as float32 (len(rows), D); NaN or infinite values are an error naming the array row and
        ``context`` (a callable is called only then, with the position in ``rows`` of the bad row)."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        stored = np.empty((len(rows), self.shape[1]), dtype=self.dtype)  # rows in ascending order
        if len(rows):
            if ordered[0] < 0 or ordered[-1] >= self.shape[0]:
                raise IndexError(f"rows {ordered[0]}..{ordered[-1]} outside the {self.shape[0]} rows of {self.path}")
            self._read(ordered, memoryview(stored).cast("B"))
        values = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        values[order] = stored  # back in the order asked for
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            position = int(np.flatnonzero(~finite)[0])
            context = context(position) if callable(context) else context
            raise DataError(
                f"features {_where(self.path, context)}: array row {rows[position]} contains NaN or infinite values"
            )
        return torch.from_numpy(values)

    def _read(self, ordered: np.ndarray, buffer: memoryview) -> None:
        """Rows ``ordered`` (ascending) into ``buffer``: one read per run of consecutive rows (a chunk of a split reads
        long runs; a random batch, a row each)."""
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        with self.path.open("rb", buffering=0) as f:
            for first, end in zip([0, *breaks.tolist()], [*breaks.tolist(), len(ordered)], strict=True):
                part = buffer[first * self._row_bytes : end * self._row_bytes]
                if os.preadv(f.fileno(), [part], self.offset + int(ordered[first]) * self._row_bytes) != len(part):
                    raise DataError(f"cannot read features {self.path}: the file became shorter while it was read")
