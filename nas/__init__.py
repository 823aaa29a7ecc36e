"""Training-aware neural architecture search: specs, models, data, training and scaling."""

__version__ = "0.1.0"
