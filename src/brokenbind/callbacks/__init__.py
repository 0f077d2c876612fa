"""Callbacks: retrieval and emergent-binding evaluation, embedding export, training stages."""

from brokenbind.callbacks.embeddings import EmbeddingWriter
from brokenbind.callbacks.emergent import EmergentBinding
from brokenbind.callbacks.stages import LoRAStage

__all__ = ["EmbeddingWriter", "EmergentBinding", "LoRAStage"]
