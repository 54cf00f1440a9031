"""Errors caused by the caller's input. Their messages are meant for the user, never a traceback."""

from dataclasses import dataclass


class InputError(ValueError):
    """Bad input: a file, a field or an argument. `details` says where, one line each."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def __str__(self) -> str:
        return "\n".join([self.message, *(f"  {d}" for d in self.details)])


@dataclass(frozen=True)
class LineError:
    line: int
    """1-based line number in the file (the row number, for a Parquet file)."""
    message: str
    unit: str = "line"
    """What `line` counts: "line", or "row" for a Parquet file."""

    def __str__(self) -> str:
        return f"{self.unit} {self.line}: {self.message}"


class DatasetError(InputError):
    """One or more bad lines (rows) in a dataset."""

    def __init__(self, errors: list[LineError], more: bool = False) -> None:
        self.errors = errors
        count = f"{len(errors)}{'+' if more else ''}"
        super().__init__(f"invalid dataset: {count} bad {errors[0].unit}(s)", [str(e) for e in errors])
