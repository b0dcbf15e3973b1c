"""Typed run configuration: schema, recipe loading, validation."""
from rlhf.config.load import ConfigError, load_config, to_yaml, validate
from rlhf.config.schema import RunConfig
from rlhf.config.stages import DPOConfig, RMConfig, SFTConfig

__all__ = ["ConfigError", "DPOConfig", "RMConfig", "RunConfig", "SFTConfig", "load_config", "to_yaml", "validate"]
