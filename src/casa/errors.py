"""The errors casa shows to users; the CLI maps each kind to an exit code."""

from __future__ import annotations


class CasaError(Exception):
    """A failure explained in a sentence that names what is at fault and what to do."""

    exit_code = 1

    def __init__(self, message: str, *, details: str | None = None):
        super().__init__(message)
        #: Longer text shown under the message, such as the user's own traceback.
        self.details = details


class UsageError(CasaError):
    """The command was given a bad option or argument."""

    exit_code = 2


class ConfigError(CasaError):
    """``casa.toml`` or the facility state is invalid."""

    exit_code = 3


class DataError(CasaError):
    """A file or dataset is missing, unreadable or not what it should be."""

    exit_code = 4


class AnalysisError(CasaError):
    """An analysis could not be found, imported or run."""

    exit_code = 5


class ServiceError(CasaError):
    """A facility service could not be started, reached or stopped."""

    exit_code = 6
