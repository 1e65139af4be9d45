"""neurolab: neuron-level interpretation of deep NLP models."""
import logging as _logging

__version__ = "0.1.0"

_logging.getLogger(__name__).addHandler(_logging.NullHandler())
