"""Training / validation pairs from a packed store, sampled on the fly (design.md §3.4), DDP-aware.

``PairDataset`` ignores the index for random draws (as the official ``__getitem__`` does), so under DDP the
DistributedSampler only decides *how many* items each rank draws; each rank reads only its own store shards
(``PairDataset(rank=, world_size=)``) with its own seed. The fixed (seeded) validation set is a function of
the index instead: every rank holds the whole split and the sampler's disjoint index shards split the work,
so the set is the same as in a single-process run.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.data.pairs import PairDataset
from mtdistill.data.store import Store

RANK_SEED_STRIDE = 1_000_003  # a prime, so rank streams never collide with small seed changes


def rank_seed(seed: int, rank: int) -> int:
    return int(seed) + RANK_SEED_STRIDE * int(rank)


class PairDataModule(pl.LightningDataModule):
    def __init__(self, data: dict[str, Any], *, seed: int, preset: str, quirks: Quirks) -> None:
        super().__init__()
        self.data = data
        self.seed = int(seed)
        self.preset = preset
        self.quirks = quirks
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @staticmethod
    def split_size(store_path: str, split: str | None) -> int:
        try:
            store = Store.open(store_path)
        except FileNotFoundError:
            raise UserError(f"data store {store_path} not found; run `mtdistill prepare SRC {store_path}`") from None
        return len(store.ids(split))

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _world(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _dataset(self, split: str, length: int | None, seed: int, fixed: bool) -> Dataset:
        world = self._world()
        shard = world > 1 and not fixed  # a fixed set must be the same on every rank: the sampler shards it
        if world > 1 and length is None:
            # the sampler divides the epoch by the world size: the epoch length is the whole split's size
            length = self.split_size(self.data["store"], split)
        return PairDataset(
            self.data["store"],
            split=split,
            preset=self.preset,
            seed=seed,
            length=length,
            quirks=self.quirks,
            min_frames=int(self.data["min_frames"]),
            fixed=fixed,
            rank=self._rank() if shard else None,
            world_size=world if shard else None,
        )

    def setup(self, stage: str | None = None) -> None:
        d = self.data
        rank = self._rank()
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._dataset(d["train_split"], d["samples_per_epoch"], rank_seed(self.seed, rank), False)
        if self.val_set is None and stage in (None, "fit", "validate") and d["val_split"]:
            fixed = bool(d["fixed_val"])
            # fixed: same seed on every rank (items are a function of the index, the sampler shards them)
            val_seed = self.seed + 1 if fixed else rank_seed(self.seed + 1, rank)
            self.val_set = self._dataset(d["val_split"], d["val_samples"], val_seed, fixed)

    def set_epoch(self, epoch: int) -> None:
        if self.train_set is not None and hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)

    def set_val_epoch(self, epoch: int) -> None:
        # official validation pairs are re-drawn every epoch (design.md §3.4); fixed ones ignore the epoch
        if self.val_set is not None and hasattr(self.val_set, "set_epoch"):
            self.val_set.set_epoch(epoch)

    def _loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        workers = int(self.data["num_workers"])
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,  # items are random draws already; shuffling would only consume global RNG
            num_workers=workers,
            # workers must be re-created each epoch so that they see set_epoch()
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
            prefetch_factor=4 if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return self._loader(self.train_set, int(self.data["batch_size"]))

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return self._loader(self.val_set, int(self.data["val_batch_size"] or self.data["batch_size"]))
