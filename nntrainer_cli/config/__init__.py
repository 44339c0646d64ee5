from .model import ModelConfig, load_config

__all__ = ["ModelConfig", "load_config"]
