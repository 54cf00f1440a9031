"""FisherSFT selection: pure tensor code, no I/O."""

from fishersft.selection.selector import Selection, select

__all__ = ["Selection", "select"]
