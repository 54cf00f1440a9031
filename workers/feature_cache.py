"""The features cache of a worker: a dataset's compressed features store, made once per (dataset, model,
max_length, compression) and kept in the artifact store for later jobs."""

import shutil
import time
from pathlib import Path

from redis import Redis

from fishersft.contract.compression import Compression
from fishersft.contract.datasets import DatasetRecord
from fishersft.contract.selection import FeatureOptions, FeaturesCost
from fishersft.features.files import load_features, read_features
from fishersft.features.set import FeatureSet
from fishersft.features.store import assemble_store, compress_store
from fishersft.models.loading import cached_model
from fishersft.models.registry import model_dim
from fishersft.pipeline import ModelLoader, Progress, embed_dataset, score_difficulty
from fishersft.service import metrics
from fishersft.service.protocol import JobInputError, Plan, ShardRequest
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore


class FeatureCache:
    """A worker's features; what it embeds is counted in `redis` (fishersft_tokens_embedded_total)."""

    def __init__(
        self, store: ArtifactStore, settings: Settings, redis: Redis, load: ModelLoader = cached_model
    ) -> None:
        self.store, self.settings, self.redis, self.load = store, settings, redis, load

    def dataset(self, dataset_id: str) -> DatasetRecord:
        dataset = self.store.dataset(dataset_id)
        if dataset is None:
            raise JobInputError("dataset_not_found", f"dataset {dataset_id} no longer exists")
        return dataset

    def compression(self, dataset: DatasetRecord, options: FeatureOptions) -> Compression:
        """What the options name, the rest chosen by the dataset's size under FISHERSFT_SELECTION_MEMORY_BYTES."""
        if dataset.is_text:
            source_dim = model_dim(self.settings.registry.model_dir(self._model(options)))
        else:  # recorded at upload; read from the file for older records
            source_dim = (
                dataset.dim or read_features(self._blob(dataset), suffix=f".{dataset.format}").features.shape[1]
            )
        return options.compression(dataset.n_examples, source_dim, self.settings.selection_memory_bytes)

    def features(
        self,
        dataset: DatasetRecord,
        options: FeatureOptions,
        progress: Progress,
        plan: Plan | None = None,
        compression: Compression | None = None,
        difficulty: bool = False,
    ) -> tuple[FeatureSet, FeaturesCost]:
        """The dataset's features store: the JSONL embedded by `options.model` (or assembled from the parts its
        `plan`'s shards embedded), or an uploaded features file compressed; at `compression`, else the plan's,
        else `compression(dataset, options)`. With `difficulty` (method ifd), its IFD scores too, added to the
        store unless an earlier job did. Also what getting it cost."""
        plan = plan or Plan()
        compression = compression or plan.compression or self.compression(dataset, options)
        model = self._model(options) if dataset.is_text else None
        features_dir = self.store.features_dir(dataset.sha256, model, options.max_length, compression.key)
        features, cost = self._stored(dataset, options, model, progress, plan, compression, features_dir)
        if difficulty and model is not None and features.ifd is None:
            start = time.perf_counter()
            model_dir = self.settings.registry.model_dir(model)
            features = score_difficulty(self._blob(dataset), model_dir, features_dir, progress=progress, load=self.load)
            cost.score_s = time.perf_counter() - start
        return features, cost

    def _stored(
        self,
        dataset: DatasetRecord,
        options: FeatureOptions,
        model: str | None,
        progress: Progress,
        plan: Plan,
        compression: Compression,
        features_dir: Path,
    ) -> tuple[FeatureSet, FeaturesCost]:
        """The features store at `features_dir`, made by `model` (None: an uploaded features file) unless cached."""
        if features_dir.exists():
            self.store.use_features(features_dir)
            features = load_features(features_dir)
            return features, FeaturesCost(features_cached=True, truncated=features.meta.get("truncated", 0))
        start, hits = time.perf_counter(), self._hits()
        truncated, load_s = 0, 0.0
        if model is None:  # read, checked and compressed into the store in one pass over the file
            raw = read_features(self._blob(dataset), suffix=f".{dataset.format}")
            features = compress_store(raw, features_dir, compression)
        elif plan.shards:
            shards = [
                ShardRequest(
                    dataset_id=dataset.id,
                    model=model,
                    max_length=self._max_length(options),
                    compression=compression,
                    start=a,
                    stop=b,
                )
                for a, b in plan.shards
            ]
            parts = [self.part(shard, progress)[0] for shard in shards]  # each made by its shard job, unless evicted
            features = assemble_store(parts, features_dir)
            for part in parts:
                shutil.rmtree(part, ignore_errors=True)  # the store holds them now
            truncated = int(features.meta.get("truncated", 0))
        else:
            embedding = embed_dataset(
                self._blob(dataset),
                self.settings.registry.model_dir(model),
                features_dir,
                max_length=self._max_length(options),
                compression=compression,
                progress=progress,
                load=self.load,
            )
            features, truncated, load_s = embedding.features, embedding.truncated, embedding.load_seconds
            metrics.count(self.redis, metrics.TOKENS_EMBEDDED, (model,), features.n_tokens)
        self.store.evict_features(self.settings.features_cache_bytes, keep=features_dir)
        return features, FeaturesCost(
            features_cached=False,
            model_cached=None if model is None else self._hits() > hits,
            truncated=truncated,
            embed_s=time.perf_counter() - start,
            model_load_s=load_s,
        )

    def part(self, shard: ShardRequest, progress: Progress) -> tuple[Path, float | None]:
        """One shard's part of a JSONL dataset's features store, embedded unless cached; and the seconds
        embedding took (None when cached)."""
        dataset = self.dataset(shard.dataset_id)
        features_dir = self.store.features_dir(dataset.sha256, shard.model, shard.max_length, shard.compression.key)
        part = self.store.part_dir(features_dir, shard.start, shard.stop)
        if part.exists():
            self.store.use_features(part)
            return part, None
        embedding = embed_dataset(
            self._blob(dataset),
            self.settings.registry.model_dir(shard.model),
            part,
            max_length=shard.max_length,
            compression=shard.compression,
            progress=progress,
            load=self.load,
            examples=(shard.start, shard.stop),
        )
        metrics.count(self.redis, metrics.TOKENS_EMBEDDED, (shard.model,), embedding.features.n_tokens)
        self.store.evict_features(self.settings.features_cache_bytes, keep=part)
        return part, embedding.seconds

    def _blob(self, dataset: DatasetRecord) -> Path:
        return self.store.blob(dataset.sha256)

    def _hits(self) -> int:
        info = getattr(self.load, "cache_info", None)
        return info().hits if info else 0

    @staticmethod
    def _model(options: FeatureOptions) -> str:
        if options.model is None:
            raise JobInputError("invalid_settings", "a JSONL dataset needs a model (the API names the default)")
        return options.model

    @staticmethod
    def _max_length(options: FeatureOptions) -> int:
        if options.max_length is None:
            raise JobInputError("invalid_settings", "max_length is resolved by the API before a job is queued")
        return options.max_length
