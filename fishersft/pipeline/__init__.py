"""The main job, dataset to selection, shared by the CLI and the workers: embed a JSONL dataset into a features
store (`embedding`), then select from features (`selection`)."""

from fishersft.pipeline.embedding import Embedding, ModelLoader, count_lines, embed_dataset, score_difficulty
from fishersft.pipeline.progress import Progress
from fishersft.pipeline.selection import (
    PartitionPicks,
    merge_partitions,
    partition_candidates,
    ranking_inputs,
    select_features,
    select_partitioned,
)

__all__ = [
    "Embedding",
    "ModelLoader",
    "PartitionPicks",
    "Progress",
    "count_lines",
    "embed_dataset",
    "merge_partitions",
    "partition_candidates",
    "ranking_inputs",
    "score_difficulty",
    "select_features",
    "select_partitioned",
]
