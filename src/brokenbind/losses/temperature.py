"""Logit scales (1/τ): the only temperature in brokenbind; embeddings themselves are never scaled."""

import math

import torch
from torch import Tensor, nn

MAX_LOG_SCALE = math.log(100.0)


class LogitScale(nn.Module):
    """The logit scale a contrastive term uses for a given anchor modality.

    Two modes, chosen in the config:
    - fixed (``learnable=False``): ``per_modality[m]`` when given (BrokenBind Appendix A: vision 1, text 1, audio 20,
      depth 5, thermal 10, tactile 10), else ``init`` for every modality;
    - learnable (``learnable=True``): one shared log-scale initialised at ln(init) and clamped to [0, ln 100] in the
      forward pass, as open_clip / CyCLIP do, so the scale stays in [1, 100] and ``exp`` never overflows.
    """

    def __init__(self, init: float = 10.0, learnable: bool = False, per_modality: dict[str, float] | None = None):
        super().__init__()
        if init <= 0 or any(v <= 0 for v in (per_modality or {}).values()):
            raise ValueError("logit scales must be positive")
        if learnable and per_modality:
            raise ValueError("per_modality scales are fixed values; they cannot be combined with learnable=True")
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
