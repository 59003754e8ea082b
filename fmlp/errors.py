"""Every exception fmlp raises on purpose, in one place.

Two families. :class:`InputError` is bad input — a config key, a data file, a run directory,
a gate name, a missing checkpoint — which the user fixes; ``fmlp`` exits 2 for it, and for
nothing else. Each keeps the built-in base it always had (``ValueError``, ``KeyError``,
``FileNotFoundError``), so a user's ``except ValueError`` still catches it. The other family
(:class:`TrainingDiverged`, :class:`GradientMismatch`, :class:`DistributedError`,
:class:`GraphvizError`, :class:`StorageError`) is a fault of the run or its environment:
exit 1; :class:`Interrupted` exits 128 + the signal.

This module imports nothing, so every layer of fmlp may raise these.
"""

from __future__ import annotations


class FmlpError(Exception):
    """The base of every exception fmlp raises on purpose."""


class InputError(FmlpError):
    """Bad input the user must fix (the message names the key, file, column or path): exit 2."""


class ConfigError(InputError, ValueError):
    """An invalid config: the message names the dotted key, the expectation and the value."""


class DataError(InputError, ValueError):
    """A dataset file or array is missing, corrupt or inconsistent with the model."""


class RunDirectoryError(InputError, ValueError):
    """The run directory cannot be used as asked (it already holds a run, or has none)."""


class UnknownGateError(InputError, KeyError):
    """No gate of that name is registered."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class NoCheckpointError(InputError, FileNotFoundError):
    """The run directory holds no complete checkpoint of the kind asked for."""


class ModuleLoadError(InputError, FileNotFoundError):
    """A module or ``.py`` file named on the command line cannot be found."""


class TrainingDiverged(FmlpError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class GradientMismatch(FmlpError, RuntimeError):
    """The engine's gradients drifted from jax.grad's beyond train.gradient_tolerance."""


class DistributedError(FmlpError, RuntimeError):
    """Another process of a multi-process run failed or cannot be reached."""


class GraphvizError(FmlpError, RuntimeError):
    """Graphviz's ``dot`` program is missing, or it failed to render."""


class StorageError(FmlpError, OSError):
    """Saving failed for a reason of the machine, not the input: the disk is full, the storage
    is read-only. What was saved before stays intact."""


class Interrupted(FmlpError):
    """The run received SIGINT (Ctrl-C) or SIGTERM; the last complete checkpoint is kept.

    ``signum`` is the signal; ``fmlp`` exits ``128 + signum`` (130, 143), as shells do.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class RunDirectoryWarning(UserWarning):
    """Something in a run directory was skipped or repaired on read (e.g. a torn last line)."""
