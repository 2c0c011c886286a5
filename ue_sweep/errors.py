"""User-facing errors: Hydra prints their one-line message alone, without a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException


class UserError(CompactHydraException):
    """Bad input the user can fix; raised before any compute."""


class ConfigError(UserError):
    """A configuration value is not acceptable."""

    def __init__(self, key: str, value: Any, accepted: str) -> None:
        self.key, self.value, self.accepted = key, value, accepted
        super().__init__(f"config error: {key}={value!r} is not accepted; expected {accepted}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Cluster jobs hand their exception back pickled (submitit); keep the arguments.
        return type(self), (self.key, self.value, self.accepted)


class MissingFileError(UserError):
    """A needed file is absent or unreadable: says where it was looked for and how to get it."""

    def __init__(self, what: str, expected: Path, fix: str, problem: str = "not found") -> None:
        self.what, self.expected, self.fix, self.problem = what, expected, fix, problem
        where = (
            f"expected {expected.name} in {expected.parent}"
            if problem == "not found"
            else f"{expected}"  # the file is there (or cannot be): name it, not where to put it
        )
        super().__init__(f"{what} {problem}: {where}; {fix}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.what, self.expected, self.fix, self.problem)
