"""Binding methods: each a small object mapping embeddings to named loss terms."""

from brokenbind.methods.base import BindingMethod, Embeddings
from brokenbind.methods.brokenbind import BrokenBind
from brokenbind.methods.centrobind import CentroBind
from brokenbind.methods.fabind import FABind

__all__ = ["BindingMethod", "BrokenBind", "CentroBind", "Embeddings", "FABind"]
