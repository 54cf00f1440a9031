"""FisherSFT selection: pure tensor code, no I/O."""

from fishersft.selection.selector import Budget, Method, Selection, Weighting, select

__all__ = ["Budget", "Method", "Selection", "Weighting", "select"]
