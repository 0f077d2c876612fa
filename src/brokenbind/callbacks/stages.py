"""Training stages within one run: linear probing of the heads, then LoRA fine-tuning (BrokenBind Table 9)."""

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from brokenbind.backbones.lora import lora_parameters
from brokenbind.errors import ConfigError


class LoRAStage(Callback):
    """Epochs before ``start_epoch`` train the heads alone (linear probing: the adapters stay frozen, and peft's zero
    init keeps the backbones exactly pretrained); from ``start_epoch`` on, the LoRA adapters train too, starting from
    the probed heads. Works across resumes: the stage follows the epoch number."""

    def __init__(self, start_epoch: int):
        if start_epoch < 0:
            raise ConfigError("LoRAStage start_epoch must be non-negative")
        self.start_epoch = start_epoch

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not any(b.lora for b in pl_module.backbones.values()):
            raise ConfigError("LoRAStage needs a backbone with a `lora` option in model.backbones")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        adapting = trainer.current_epoch >= self.start_epoch
        for m, backbone in pl_module.backbones.items():
            parameters = lora_parameters(backbone)
            if parameters and parameters[0].requires_grad != adapting:
                for p in parameters:
                    p.requires_grad_(adapting)
                rank_zero_info(
                    f"epoch {trainer.current_epoch}: LoRA adapters of {m} {'train' if adapting else 'frozen'}"
                )
