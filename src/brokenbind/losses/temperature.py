"""Logit scales (1/τ): the only temperature in brokenbind; embeddings themselves are never scaled."""

import math

import torch
from torch import Tensor, nn

from brokenbind.errors import ConfigError

MAX_SCALE = 100.0
MAX_LOG_SCALE = math.log(MAX_SCALE)


class LogitScale(nn.Module):
    """The logit scale a contrastive term uses for a given anchor modality.

    Two modes, chosen in the config:
    - fixed (``learnable=False``): ``per_modality[m]`` when given (BrokenBind Appendix A: vision 1, text 1, audio 20,
      depth 5, thermal 10, tactile 10), else ``init`` for every modality;
    - learnable (``learnable=True``): one shared log-scale initialised at ln(init) and clamped to [0, ln 100] in the
      forward pass, as open_clip / CyCLIP do, so the scale stays in [1, 100] and ``exp`` never overflows.
    Configured values must lie in (0, 100]: larger scales saturate the softmax (a loss of -2.5e8 was seen at 1e9).
    """

    def __init__(self, init: float = 10.0, learnable: bool = False, per_modality: dict[str, float] | None = None):
        super().__init__()
        scales = {"logit_scale": init, **{f"modality_scales.{m}": v for m, v in (per_modality or {}).items()}}
        for name, value in scales.items():
            if not 0 < value <= MAX_SCALE:  # beyond 100 (τ < 0.01) the softmax saturates and the loss blows up
                raise ConfigError(f"{name} must lie in (0, {MAX_SCALE:g}] (the logit scale 1/τ), got {value:g}")
        if learnable and per_modality:
            raise ConfigError("modality_scales are fixed values; they cannot be combined with learn_logit_scale=True")
        self.per_modality = dict(per_modality or {})
        self.learnable = learnable
        log_init = torch.tensor(math.log(init))
        if learnable:
            self.log_scale = nn.Parameter(log_init)
        else:
            self.register_buffer("log_scale", log_init, persistent=False)

    def forward(self, modality: str) -> Tensor:
        if modality in self.per_modality:
            return torch.tensor(self.per_modality[modality], device=self.log_scale.device)
        if self.learnable:
            return self.log_scale.clamp(0.0, MAX_LOG_SCALE).exp()
        return self.log_scale.exp()
