"""FisherSFT data selection for supervised fine-tuning.

`from fishersft import select` selects in-process (see fishersft.library); the HTTP service lives in the `app`
and `workers` packages, the typed client in fishersft.client, the options and results in fishersft.contract.
`select` is imported on first use, so that the contract and the client load without torch."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fishersft.library import select

__all__ = ["select"]


def __getattr__(name: str) -> Any:
    if name == "select":
        from fishersft.library import select

        return select
    raise AttributeError(f"module 'fishersft' has no attribute {name!r}")
