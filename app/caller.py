"""Who is asking, and the datasets they may see (their jobs: app.jobs.Jobs)."""

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from fishersft.contract.datasets import DatasetClaim, DatasetRecord
from fishersft.service.store import ArtifactStore


@dataclass(frozen=True)
class Caller:
    """Who is asking: `owner` is a fingerprint of their API key (the key itself is never stored); None when the
    service is open (no keys configured). Datasets and jobs belong to the key that made them: another key sees
    a 404, an admin key sees everything."""

    owner: str | None = None
    admin: bool = False

    def sees(self, owners: Collection[str | None]) -> bool:
        """Whether the caller may see what `owners` hold (None: made while the service was open)."""
        return self.owner is None or self.admin or self.owner in owners


OPEN = Caller()
"""The caller of a service without API keys: sees everything."""


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Datasets:
    """The datasets `caller` may see: those its key uploaded (all for an admin key or an open service)."""

    def __init__(self, store: ArtifactStore, caller: Caller) -> None:
        self.store, self.caller = store, caller

    def get(self, dataset_id: str) -> DatasetRecord | None:
        record = self.store.dataset(dataset_id)
        return self._view(record) if record is not None else None

    def all(self) -> list[DatasetRecord]:
        return [view for r in self.store.datasets() if (view := self._view(r)) is not None]

    def _view(self, record: DatasetRecord) -> DatasetRecord | None:
        """The record as the caller sees it (with its own upload's name and time), or None if it may not."""
        if not self.caller.sees(self.store.owners(record.id)):
            return None
        claim = self.store.claim(record.id, self.caller.owner) if self.caller.owner is not None else None
        return record.model_copy(update=claim.model_dump()) if claim is not None else record

    def claim(self, dataset_id: str, claim: DatasetClaim) -> None:
        """The caller uploaded this dataset (maybe again, maybe after another key) with the name and at the time
        of `claim`: it may see it from now on, under its first claim's name and time."""
        if self.caller.owner is not None:
            self.store.add_owner(dataset_id, self.caller.owner, claim)

    def delete(self, record: DatasetRecord) -> None:
        """An admin (or an open service) deletes the dataset; a key gives up its claim, and the dataset goes when
        no key holds it any more."""
        if self.caller.owner is None or self.caller.admin or not self.store.remove_owner(record.id, self.caller.owner):
            self.store.delete_dataset(record)
