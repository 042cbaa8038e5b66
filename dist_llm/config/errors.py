"""The one error type of the config package."""


class ConfigError(ValueError):
    """A config file or override is unknown, mistyped or impossible; the message names the key."""
