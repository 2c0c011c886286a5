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


class MachineError(CompactHydraException):
    """An expected failure of the machine, not of the input or the code (a full disk, a killed
    rank): one line in the terminal, the traceback in the job's log file."""


class StorageError(MachineError):
    """A write failed for lack of space or permission: names the file, the free space there and
    the size the write needed (None: unknown)."""

    def __init__(self, path: Path, problem: str, free: int | None, needed: int | None) -> None:
        self.path, self.problem, self.free, self.needed = path, problem, free, needed
        super().__init__(
            f"cannot write {path}: {problem} ({_size(free)} free there, {_size(needed)} needed)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.problem, self.free, self.needed)


def _size(n: int | None) -> str:
    """Bytes in the unit a person reads (``1.5 MB``); ``unknown`` for None."""
    if n is None:
        return "unknown"
    if n < 1000:
        return f"{n} bytes"
    power = min((len(str(n)) - 1) // 3, 4)
    return f"{n / 1000**power:.1f} {('KB', 'MB', 'GB', 'TB')[power - 1]}"
