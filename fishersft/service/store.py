"""The artifact store: a directory holding datasets, cached features and results, addressed by content hash.

    blobs/<sha256>                          uploaded files, content-addressed
    datasets/<id>.json                      dataset metadata
    features/<sha256>-<model>-<max_length>-v<version>-<compression>/ features stores computed from a dataset (see
        fishersft.features.store); <sha256>-upload-<compression>/ for an uploaded features file; <store>.part-<a>-<b>/
        one shard's part (examples a:b) until the store is assembled
    results/<job id>.json                   job results (selections, finetunes, comparisons)
    artifacts/<job id>/                     files a job made: adapter.tar.gz, plot.png

Everything a user uploads or gets back lives here, not in Redis: losing Redis loses no dataset or result.
Writes go to a temporary name first and are renamed into place, so a crash never leaves a partial file.
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fishersft.contract.datasets import DatasetClaim, DatasetRecord
from fishersft.contract.jobs import SavedJob, is_id
from fishersft.features.set import STORE_VERSION


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("blobs", "datasets", "features", "results", "artifacts", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def temp_file(self, suffix: str = "") -> Path:
        fd, name = tempfile.mkstemp(suffix=suffix, dir=self.root / "tmp")
        os.close(fd)
        return Path(name)

    def blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def put_blob(self, temp: Path, sha256: str) -> Path:
        os.replace(temp, self.blob(sha256))
        return self.blob(sha256)

    def dataset(self, dataset_id: str) -> DatasetRecord | None:
        if not is_id(dataset_id, "ds"):
            return None
        return _read_record(self.root / "datasets" / f"{dataset_id}.json")

    def put_dataset_once(self, record: DatasetRecord) -> DatasetRecord:
        """Store a dataset's record unless one exists; returns the stored one (the first writer's)."""
        path = self.root / "datasets" / f"{record.id}.json"
        temp = _write_temp(path, record.model_dump(mode="json"))
        try:
            os.link(temp, path)  # atomic create-if-absent
        except FileExistsError:
            return _read_record(path) or record
        finally:
            temp.unlink()
        return record

    def owners(self, dataset_id: str) -> set[str]:
        """Fingerprints of the API keys that uploaded a dataset (empty when uploaded to an open service)."""
        folder = self.root / "datasets" / f"{dataset_id}.owners"
        return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.is_dir() else set()

    def add_owner(self, dataset_id: str, owner: str, claim: DatasetClaim) -> None:
        """One file per owner, holding its claim: concurrent uploads by different keys never lose one, and a key's
        first claim stays."""
        folder = self.root / "datasets" / f"{dataset_id}.owners"
        folder.mkdir(exist_ok=True)
        path = folder / _safe(owner)
        temp = _write_temp(path, claim.model_dump(mode="json"))
        try:
            os.link(temp, path)  # atomic create-if-absent
        except FileExistsError:
            pass
        finally:
            temp.unlink()

    def claim(self, dataset_id: str, owner: str) -> DatasetClaim | None:
        """The owner's claim of a dataset (None for none, or one stored before claims had a name and time)."""
        try:
            text = (self.root / "datasets" / f"{dataset_id}.owners" / _safe(owner)).read_text()
        except FileNotFoundError:
            return None
        return DatasetClaim.model_validate_json(text) if text else None

    def remove_owner(self, dataset_id: str, owner: str) -> set[str]:
        """Drop one owner; returns those left."""
        (self.root / "datasets" / f"{dataset_id}.owners" / _safe(owner)).unlink(missing_ok=True)
        return self.owners(dataset_id)

    def dataset_count(self) -> int:
        return sum(1 for _ in (self.root / "datasets").glob("*.json"))

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def datasets(self) -> list[DatasetRecord]:
        records = [_read_record(p) for p in (self.root / "datasets").glob("*.json")]
        return [r for r in records if r is not None]

    def delete_dataset(self, record: DatasetRecord) -> None:
        (self.root / "datasets" / f"{record.id}.json").unlink(missing_ok=True)
        shutil.rmtree(self.root / "datasets" / f"{record.id}.owners", ignore_errors=True)
        self.blob(record.sha256).unlink(missing_ok=True)
        for cached in (self.root / "features").glob(f"{record.sha256}-*"):
            shutil.rmtree(cached, ignore_errors=True)

    def sweep(self, older_than_s: float) -> list[Path]:
        """Remove what crashed writers left: upload copies in tmp/ and partial features stores, once older than
        `older_than_s` (the job timeout: nothing still running can own them). Returns what was removed."""
        cutoff = time.time() - older_than_s
        leftovers = [
            *(self.root / "tmp").iterdir(),
            *(self.root / "features").glob("*.partial"),
            *(self.root / "datasets").glob(".*.tmp"),
            *(self.root / "results").glob(".*.tmp"),
        ]
        removed = [p for p in leftovers if p.stat().st_mtime < cutoff]
        for path in removed:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return removed

    def features_dir(self, sha256: str, model: str | None, max_length: int | None, compression: str) -> Path:
        """The compressed features store of a dataset: embedded by `model` at `max_length`, or (model None) an
        uploaded features file; `compression`: its key (e.g. `r16`). An embedded store's name carries the
        embedder's STORE_VERSION: stores an older embedder wrote (without scores or uncertainty) are never found, only
        evicted."""
        source = f"{_safe(model)}-{max_length}-v{STORE_VERSION}" if model is not None else "upload"
        return self.root / "features" / f"{sha256}-{source}-{compression}"

    def part_dir(self, features_dir: Path, start: int, stop: int) -> Path:
        """One shard's part of a features store: examples start:stop (see features.assemble_store). Parts are
        cached like stores, and removed once assembled into theirs."""
        return features_dir.with_name(f"{features_dir.name}.part-{start}-{stop}")

    def use_features(self, path: Path) -> None:
        """Mark a cached features store as just used (its directory's mtime orders eviction)."""
        os.utime(path)

    def evict_features(self, max_bytes: int, keep: Path) -> list[Path]:
        """Remove cached features stores, least recently used first, until they take at most `max_bytes`;
        never `keep` (the one a job is using). A worker still reading a removed store keeps its open files.
        Returns what was removed."""
        stores = [p for p in (self.root / "features").iterdir() if p.is_dir() and not p.name.endswith(".partial")]
        sizes = {p: sum(f.stat().st_size for f in p.iterdir()) for p in stores}
        total, removed = sum(sizes.values()), []
        for path in sorted(stores, key=lambda p: p.stat().st_mtime):
            if total <= max_bytes:
                break
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)
                total -= sizes[path]
                removed.append(path)
        return removed

    def artifact(self, job_id: str, name: str) -> Path:
        return self.root / "artifacts" / _safe(job_id) / name

    def put_artifact(self, job_id: str, name: str, source: Path) -> Path:
        """Move a finished file into place (atomic: readers see it whole or not at all)."""
        target = self.artifact(job_id, name)
        target.parent.mkdir(exist_ok=True)
        os.replace(source, target)
        return target

    def result(self, job_id: str) -> SavedJob | None:
        saved = _read_json(self.root / "results" / f"{_safe(job_id)}.json")
        return None if saved is None else SavedJob.model_validate(saved)

    def put_result(self, job_id: str, saved: SavedJob) -> None:
        _write_json(self.root / "results" / f"{job_id}.json", saved.model_dump(mode="json"))


def _safe(name: str) -> str:
    """A path component that cannot leave its folder."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _read_record(path: Path) -> DatasetRecord | None:
    record = _read_json(path)
    return None if record is None else DatasetRecord.model_validate(record)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    os.replace(_write_temp(path, value), path)


def _write_temp(path: Path, value: dict[str, Any]) -> Path:
    """`value` as JSON in a file of its own next to `path` (concurrent writers never share one)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(value))
    return Path(name)
