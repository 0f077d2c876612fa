"""Binding methods: each a small object mapping embeddings to named loss terms."""

from brokenbind.methods.base import BindingMethod, Embeddings
from brokenbind.methods.brokenbind import BrokenBind
from brokenbind.methods.centrobind import CentroBind
from brokenbind.methods.cmcr import CMCR
from brokenbind.methods.fabind import FABind
from brokenbind.methods.impute import Impute
from brokenbind.methods.transitive import Transitive

__all__ = ["CMCR", "BindingMethod", "BrokenBind", "CentroBind", "Embeddings", "FABind", "Impute", "Transitive"]
