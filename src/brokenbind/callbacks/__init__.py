"""Callbacks: retrieval and emergent-binding evaluation, the pivot diagnosis, embedding export, fault tolerance,
TensorBoard figures, and (opt-in) the representation metrics of the field."""

from brokenbind.callbacks.diagnosis import PivotDiagnosis
from brokenbind.callbacks.embeddings import EmbeddingWriter
from brokenbind.callbacks.emergent import EmergentBinding
from brokenbind.callbacks.faults import FaultTolerance
from brokenbind.callbacks.figures import TensorBoardFigures
from brokenbind.callbacks.representation import RepresentationMetrics

__all__ = [
    "EmbeddingWriter",
    "EmergentBinding",
    "FaultTolerance",
    "PivotDiagnosis",
    "RepresentationMetrics",
    "TensorBoardFigures",
]
