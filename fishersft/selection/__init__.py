"""FisherSFT selection: pure tensor code, no I/O."""

from fishersft.selection.selector import Budget, Selection, select
from fishersft.variants import WEIGHTINGS, Method, Weighting

__all__ = ["WEIGHTINGS", "Budget", "Method", "Selection", "Weighting", "select"]
