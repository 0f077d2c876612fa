"""Callbacks: retrieval and emergent-binding evaluation, embedding export."""

from brokenbind.callbacks.embeddings import EmbeddingWriter
from brokenbind.callbacks.emergent import EmergentBinding

__all__ = ["EmbeddingWriter", "EmergentBinding"]
