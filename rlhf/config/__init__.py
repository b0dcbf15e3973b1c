"""Typed run configuration: schema, recipe loading, validation."""
from rlhf.config.load import ConfigError, load_config, to_yaml, validate
from rlhf.config.schema import RunConfig

__all__ = ["ConfigError", "RunConfig", "load_config", "to_yaml", "validate"]
