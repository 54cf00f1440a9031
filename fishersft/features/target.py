"""A target set in the space of the features selected from: its examples' mean features (method similarity) and
its second moment A (method fisher with a target, and the target variance every result with a target reports)."""

from dataclasses import dataclass

import numpy as np
import torch

from fishersft.contract.selection import Weighting
from fishersft.errors import InputError
from fishersft.features.set import FeatureSet, feature_blocks
from fishersft.features.store import projection_matrix
from fishersft.selection.targeted import second_moment


@dataclass(frozen=True)
class TargetSet:
    name: str
    """What the result calls it: the target's dataset id (the service) or its file (the command line)."""
    features: FeatureSet


def target_means(features: FeatureSet, target: FeatureSet) -> torch.Tensor:
    """The target's mean features [M x d] in the space of `features`."""
    means = torch.from_numpy(np.asarray(target.mean_rows(), dtype=np.float32))
    projection = _projection(features, means.shape[1])
    return means if projection is None else means @ projection


def target_second_moment(features: FeatureSet, target: FeatureSet, weighting: Weighting) -> torch.Tensor:
    """A = the mean outer product of the target's rows under `weighting` (the rows fisher would use: every loss
    token's, each over its example's loss tokens, or each example's mean), float64 [d x d] in the space of
    `features`. The mean is over the target's loss tokens (`tokens`) or its examples (the other weightings)."""
    if target.n_tokens == 0:
        raise InputError("the target set has no loss tokens")
    blocks, lengths = feature_blocks(target, weighting)
    moment = second_moment(blocks, float(lengths.sum()) if weighting == "tokens" else float(len(lengths)))
    projection = _projection(features, moment.shape[1])
    if projection is None:
        return moment
    projection = projection.to(torch.float64)
    return projection.T @ moment @ projection


def _projection(features: FeatureSet, width: int) -> torch.Tensor | None:
    """The matrix that maps the target's `width` dimensions to those of `features` (projected as `features` was,
    when it was), None when they are the same; an InputError when neither."""
    projection = projection_matrix(features)
    if projection is not None and width == projection.shape[0]:
        return projection
    if width != features.features.shape[1]:
        raise InputError(
            f"the target's features are {width}-dimensional, the dataset's {features.features.shape[1]}: "
            "embed both with the same model"
        )
    return None
