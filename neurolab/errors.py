"""Exception types for bad input. The CLI turns these into one clear error line (exit code 2)."""


class NeurolabError(Exception):
    """Base of all errors caused by user input (files, configs, stores); messages name the culprit."""


class ConfigError(NeurolabError, ValueError):
    """An invalid or inconsistent configuration value; the message names the key."""
