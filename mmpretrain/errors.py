"""Errors that mean "your input is wrong", reported as one line without a traceback by the CLI."""


class ConfigError(ValueError):
    """A config (or the data/model it names) that cannot be used as written; the message names the key."""


class DataError(RuntimeError):
    """Training data that cannot be used: too many bad samples, a source with nothing readable in it."""


class TrainingError(DataError):
    """A training state that cannot go on: a loss or gradient norm that is not finite (the run diverged). Reported
    like DataError (one line, exit 3); the checkpoints written before it are kept and finite."""


def require(ok: bool, key: str, value: object, expected: str) -> None:
    """A config section's value check: unless `ok`, a one-line ConfigError naming `key`, its value and the range."""
    if not ok:
        raise ConfigError(f"{key}: invalid value {value!r} (expected {expected})")


class StorageError(OSError):
    """The run directory cannot be written (a full disk: ENOSPC, a quota); the message is one line naming the
    errno and the path. What was saved before is kept."""
