"""Selection methods: a module each, registered in `registry`. Adding a method is a module here that calls
`register_method`, one import below, and its tests (docs/development.md)."""

# isort: off
# the registration order: the order of the contract's `Method` values, the CLI's choices and the docs
from fishersft.methods import fisher, random, kcenter, similarity, loss, ifd  # noqa: F401 (each registers itself)

# isort: on
from fishersft.methods.registry import (
    MethodSpec,
    RankingInputs,
    method_spec,
    model_passes,
    register_method,
    registered,
)

DEFAULT_METHOD = fisher.FISHER.name
"""What a selection runs unless it names a method."""
YARDSTICK = random.RANDOM.name
"""What every comparison trains and judges the other methods against."""

__all__ = [
    "DEFAULT_METHOD",
    "YARDSTICK",
    "MethodSpec",
    "RankingInputs",
    "method_spec",
    "model_passes",
    "register_method",
    "registered",
]
