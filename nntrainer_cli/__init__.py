"""nntrainer_cli: train NNTrainer INI models with memory planned ahead of time."""

__version__ = "0.1.0"
