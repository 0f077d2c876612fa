"""Callbacks: retrieval and emergent-binding evaluation, embedding export, fault tolerance."""

from brokenbind.callbacks.embeddings import EmbeddingWriter
from brokenbind.callbacks.emergent import EmergentBinding
from brokenbind.callbacks.faults import FaultTolerance

__all__ = ["EmbeddingWriter", "EmergentBinding", "FaultTolerance"]
