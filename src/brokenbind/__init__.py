"""brokenbind: binding modalities that never co-occur in one dataset."""

__version__ = "0.1.0"
