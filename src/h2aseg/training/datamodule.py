"""``PETCTDataModule``: dataset, patient-level split, MONAI pipelines and seeded DataLoaders for training."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from monai.data import list_data_collate
from monai.transforms import Randomizable
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from h2aseg.config import to_plain
from h2aseg.data.dataset import make_dataset
from h2aseg.data.layouts import Case, read_dataset
from h2aseg.data.splits import Split, make_folds, make_split
from h2aseg.data.transforms import PreprocessConfig, train_transforms, val_transforms

logger = logging.getLogger(__name__)

SPLIT_FILENAME = "split.json"


class EpochIndexSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(epoch, index)`` pairs instead of indices.

    The order depends only on ``(seed, epoch)`` (Lightning calls ``set_epoch`` before every epoch), and
    each rank takes its own share. Passing the epoch along lets :class:`EpochSeededDataset` draw the random
    augmentation of a sample from ``(seed, epoch, index)`` alone, whatever the number of workers or ranks
    and whether or not the run was resumed: MONAI and PyTorch offer per-worker seeding, which differs with
    the worker count and restarts on resume, so this pairing is written here.

    Args:
        dataset: the dataset to sample.
        num_replicas: number of ranks (``trainer.world_size``).
        rank: this rank (``trainer.global_rank``).
        shuffle: new random order every epoch.
        seed: seed of the order.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return ((epoch, index) for index in super().__iter__())


class EpochSeededDataset(Dataset):
    """Reseeds the random transforms of ``dataset`` from ``(seed, epoch, index)`` before each sample.

    Args:
        dataset: a MONAI dataset whose ``transform`` (a ``Compose``) holds the random augmentation.
        seed: the run's seed.

    Items are fetched with ``(epoch, index)`` keys (see :class:`EpochIndexSampler`) or a plain index
    (epoch 0).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        transform = getattr(self.dataset, "transform", None)
        if isinstance(transform, Randomizable):
            sample_seed = np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]
            transform.set_random_state(seed=int(sample_seed))
        return self.dataset[index]


class PETCTDataModule(lightning.LightningDataModule):
    """Training patches and whole validation volumes of a PET/CT dataset, split by patient.

    Args:
        config: the resolved run config; reads ``seed``, ``output_dir``, ``data``, ``preprocess`` and
            ``trainer.batch_size``.

    The training loader yields ``trainer.batch_size`` volumes × ``preprocess.samples_per_volume`` patches
    per batch (the patches of a volume flattened into the batch: ``image (B·n, 2, x, y, z)``); the
    validation loader one whole preprocessed volume at a time. A split made here (``data.split_file``
    null) is written to ``output_dir/split.json`` with its seed.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = to_plain(config)
        self.split: Split | None = None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read the dataset, make or load the split, build the train and validation datasets."""
        data = self.config["data"]
        if data["root"] is None:
            raise ValueError("config data.root is not set: give the dataset folder (data.root=PATH)")
        cases = read_dataset(Path(data["root"]), layout=data["layout"])
        self.split = self._make_or_load_split(cases)
        by_id = {case.case_id: case for case in cases}
        train_items = _items(self.split.train, by_id, data["root"], "training")
        val_items = _items(self.split.val, by_id, data["root"], "validation")
        logger.info(
            "%d training and %d validation cases from %s", len(train_items), len(val_items), data["root"]
        )
        preprocess = PreprocessConfig.from_dict(self.config["preprocess"])
        cache = {
            "cache_dir": None if data["cache_dir"] is None else Path(data["cache_dir"]),
            "in_memory": data["cache_in_memory"],
        }
        training = make_dataset(train_items, train_transforms(preprocess), **cache)
        self.train_dataset = EpochSeededDataset(training, seed=self.config["seed"])
        self.val_dataset = make_dataset(val_items, val_transforms(preprocess), **cache)

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of patches, the same on every run with the same seed."""
        world_size, rank = self._world_size_and_rank()
        sampler = EpochIndexSampler(
            self.train_dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=self.config["seed"]
        )
        return self._loader(self.train_dataset, sampler, batch_size=self.config["trainer"]["batch_size"])

    def val_dataloader(self) -> DataLoader:
        """Whole volumes, batch 1, in split order (each rank takes its share)."""
        world_size, rank = self._world_size_and_rank()
        sampler = (
            SequentialSampler(self.val_dataset)
            if world_size == 1
            else DistributedSampler(self.val_dataset, num_replicas=world_size, rank=rank, shuffle=False)
        )
        return self._loader(self.val_dataset, sampler, batch_size=1)

    def _loader(self, dataset: Dataset, sampler: torch.utils.data.Sampler, batch_size: int) -> DataLoader:
        num_workers = self.config["data"]["num_workers"]
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=list_data_collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=num_workers > 0,
        )

    def _world_size_and_rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def _make_or_load_split(self, cases: Sequence[Case]) -> Split:
        """``data.split_file`` if set, else a seeded split by patient (a fold of ``data.n_folds`` if
        ``data.fold`` is set), saved to ``output_dir/split.json`` by rank 0."""
        data, seed = self.config["data"], self.config["seed"]
        if data["split_file"] is not None:
            return Split.load(Path(data["split_file"]))
        if data["fold"] is not None:
            folds = make_folds(cases, k=data["n_folds"], seed=seed)
            if not 0 <= data["fold"] < len(folds):
                raise ValueError(f"config data.fold={data['fold']} is outside 0..{len(folds) - 1}")
            split = folds[data["fold"]]
        else:
            split = make_split(cases, seed=seed, ratios=tuple(data["split_ratios"]))
        if self.trainer is None or self.trainer.is_global_zero:
            split_path = Path(self.config["output_dir"]) / SPLIT_FILENAME
            split.save(split_path)
            logger.info("split by patient (seed %d) written to %s", seed, split_path)
        return split


def _items(case_ids: Sequence[str], by_id: dict[str, Case], root: str, role: str) -> list[dict[str, str]]:
    """``Case.as_dict()`` of each id, checking that the case exists and has a label."""
    items = []
    for case_id in case_ids:
        case = by_id.get(case_id)
        if case is None:
            raise ValueError(f"{root}: {role} case {case_id!r} of the split is not in the dataset")
        if case.label is None:
            raise ValueError(f"{root}: {role} case {case_id!r} has no label")
        items.append(case.as_dict())
    if not items:
        raise ValueError(f"{root}: the split has no {role} case")
    return items
