"""The config file: one validated model for every section, secrets read only when needed."""
from tinabs_tasks.config.model import *  # noqa: F401,F403
from tinabs_tasks.config.model import ConfigError, Config, PoolConfig, load, parse, config_path  # noqa: F401
