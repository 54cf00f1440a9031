"""How the pipeline reports progress to its caller (the CLI's bars, a worker's job events)."""

from collections.abc import Callable

from fishersft.contract.jobs import Phase

Progress = Callable[[Phase, int, int], None]
"""progress(phase, done, total): see `contract.jobs.Progress` for what each phase counts."""
