"""LoRA adapters on a frozen backbone, through the ``peft`` library (BrokenBind §4.1: heads by linear probing, then
LoRA fine-tuning with the probed heads loaded; Table 9)."""

from typing import Any

from brokenbind.backbones.base import Backbone
from brokenbind.errors import ConfigError


def apply_lora(
    backbone: Backbone, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules: Any = None
) -> None:
    """Inject LoRA adapters into ``backbone``'s ``target_modules`` (names or a regex, as peft takes them).

    The base weights stay frozen; only the adapters train, and only they are saved in checkpoints. peft initialises
    each adapter's B matrix to zero, so the backbone computes exactly what it did before until the adapters train:
    the linear-probing stage sees the pretrained features. The adapters start frozen; ``BindingModule`` unfreezes
    them when the LoRA stage begins (``lora_start_epoch``).
    """
    from peft import LoraConfig, inject_adapter_in_model  # a required dependency, imported when a spec asks for LoRA

    if not target_modules:
        raise ConfigError("lora needs target_modules: the names (or a regex) of the backbone layers to adapt")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    inject_adapter_in_model(config, backbone)
    backbone.requires_grad_(False)
    backbone.lora = True


def lora_parameters(backbone: Backbone) -> list:
    return [p for name, p in backbone.named_parameters() if "lora_" in name]
