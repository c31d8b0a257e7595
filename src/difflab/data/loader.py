"""Batches from an in-memory dataset, reproducible to the sample for exact resume.

BatchIterator is what the trainer uses: each batch is one index into the uint8 tensor
(N, C, H, W), converted to float [-1, 1] and flipped as a whole, instead of N calls to a
Dataset's __getitem__ and a collate.

Randomness is a pure function of (seed, epoch): the epoch's permutation and its flip
decisions come from torch.Generators seeded from those two numbers only, so (epoch,
position) is the whole state and a resumed run sees exactly the batches it would have
seen. Flips are decided per dataset index, so a sample's flip does not depend on the
batch size or on the number of ranks.

Distributed: every rank draws the same permutation and takes the strided slice
perm[rank::world_size], cut to N // world_size samples so every rank runs the same number
of steps (the few left over differ from epoch to epoch). The ranks' batch p together are
then exactly perm[p*B*W : (p+1)*B*W], the batch a single process with batch size B*W
would see.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from .base import ImageData, PointData
from .transforms import hflip_where, to_float


class Batch(NamedTuple):
    images: torch.Tensor  # (B, C, H, W) float in [-1, 1] (or uint8 when scale=False)
    labels: torch.Tensor  # (B,) int64, -1 where the data has no labels


def _mix_seed(*values: int) -> int:
    """A 63-bit seed from integers, well spread (nearby epochs give unrelated streams)."""
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n samples in `epoch` (int64, CPU)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_mix_seed(seed, epoch, 0)))


def balanced_draw(labels: torch.Tensor, balance: float, seed: int, epoch: int) -> torch.Tensor:
    """An epoch of len(labels) indices drawn with replacement, index i with weight
    count(labels[i]) ** -balance: a label's share of the draw is proportional to
    count ** (1 - balance)."""
    _, inverse, counts = labels.cpu().unique(return_inverse=True, return_counts=True)
    weights = counts.double().pow(-balance)[inverse]
    rng = torch.Generator().manual_seed(_mix_seed(seed, epoch, 2))
    return torch.multinomial(weights, len(labels), replacement=True, generator=rng)


def epoch_flips(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Whether each dataset index is mirrored in `epoch` (bool, CPU, probability 1/2)."""
    g = torch.Generator().manual_seed(_mix_seed(seed, epoch, 1))
    return torch.rand(n, generator=g) < 0.5


def _unpack(data: Any, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(data, ImageData):
        return data.images, data.labels if labels is None else labels
    if isinstance(data, PointData):
        return data.points, data.labels if labels is None else labels
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be ImageData, PointData or a tensor, got {type(data)}")
    return data, labels


class ImageDataset(torch.utils.data.Dataset):
    """Per-item view for torch's DataLoader: (image, label or -1).

    image is float in [-1, 1] when scale=True (else uint8). With hflip=True the flip of
    item i in epoch e is epoch_flips(N, seed, e)[i], the same as BatchIterator's; call
    set_epoch(e) before each epoch.
    """

    def __init__(
        self,
        data: ImageData | torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        scale: bool = True,
        hflip: bool = False,
        seed: int = 0,
    ) -> None:
        self.images, self.labels = _unpack(data, labels)
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("ImageDataset needs uint8 images (N, C, H, W)")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")
        self.scale, self.hflip, self.seed = scale, hflip, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._flips = epoch_flips(len(self.images), self.seed, epoch) if self.hflip else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        if self.scale:
            image = to_float(image)
        if self._flips is not None and self._flips[i]:
            image = image.flip(-1)
        label = -1 if self.labels is None else int(self.labels[i])
        return image, label


class BatchIterator:
    """Seeded, resumable, shardable batches from data held in memory.

    data: ImageData, PointData or a tensor (uint8 images (N, C, H, W), or float points).
    scale: uint8 images become float in [-1, 1] (float data is passed through).
    hflip: mirror each image left-right with probability 1/2 (images only).
    device: where batches are produced (the data stays where it is; move it to the GPU
    beforehand to index there). drop_last: skip the last incomplete batch of each epoch.
    balance: how evenly labels are drawn. 0 shuffles the data (each sample once per epoch);
    above 0 each epoch draws its samples with replacement, sample i with weight
    count(label_i) ** -balance, so 1 draws every label equally often and 0.5 lifts a label
    a hundred times rarer to a tenth as often (rare attribute groups of a captioned set).

    `for batch in it` runs the rest of the current epoch, then moves to the next;
    it.next_batch() rolls over epochs by itself. state_dict() / load_state_dict() carry
    (epoch, position) for exact resume.
    """

    def __init__(
        self,
        data: ImageData | PointData | torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        hflip: bool = False,
        scale: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        balance: float = 0.0,
    ) -> None:
        self.data, self.labels = _unpack(data, labels)
        n = len(self.data)
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels of shape {tuple(self.labels.shape)} for {n} samples")
        if hflip and self.data.ndim != 4:
            raise ValueError(f"hflip needs images (N, C, H, W), got shape {tuple(self.data.shape)}")
        if not 1 <= world_size or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} with world_size {world_size}: need 0 <= rank < world")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.hflip, self.scale, self.seed, self.dtype = hflip, scale, seed, dtype
        self.rank, self.world_size = rank, world_size
        if not 0.0 <= balance <= 1.0:
            raise ValueError(f"balance must be in [0, 1], got {balance}")
        if balance and self.labels is None:
            raise ValueError("balance > 0 draws by label, and this data has no labels")
        self.balance = float(balance)
        self.device = torch.device(device) if device is not None else self.data.device
        self.samples_per_rank = n // world_size
        if len(self) == 0:
            raise ValueError(
                f"no batches: {n} samples over {world_size} rank(s) give "
                f"{self.samples_per_rank} per rank, fewer than batch_size {batch_size} "
                f"with drop_last=True; lower batch_size or set drop_last=False"
            )
        self.epoch, self.position = 0, 0
        self._plan_epoch: int | None = None

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return math.ceil(self.samples_per_rank / self.batch_size)

    def _plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's sample indices for the epoch, and the epoch's flips (by index)."""
        if self._plan_epoch != epoch:
            n = len(self.data)
            if self.balance:
                order = balanced_draw(self.labels, self.balance, self.seed, epoch)
            elif self.shuffle:
                order = epoch_permutation(n, self.seed, epoch)
            else:
                order = torch.arange(n)
            take = self.samples_per_rank * self.world_size
            self._indices = order[self.rank : take : self.world_size]
            self._flips = epoch_flips(n, self.seed, epoch) if self.hflip else None
            self._plan_epoch = epoch
        return self._indices, self._flips

    def batch_at(self, epoch: int, position: int) -> Batch:
        """Batch number `position` of `epoch` on this rank, without changing the state."""
        indices, flips = self._plan(epoch)
        index = indices[position * self.batch_size : (position + 1) * self.batch_size]
        x = self.data.index_select(0, index.to(self.data.device))
        x = x.to(self.device, non_blocking=True)
        if self.scale and x.dtype == torch.uint8:
            x = to_float(x, self.dtype)
        if flips is not None:
            x = hflip_where(x, flips.index_select(0, index).to(self.device))
        if self.labels is None:
            y = torch.full((len(index),), -1, dtype=torch.int64, device=self.device)
        else:
            y = self.labels.index_select(0, index.to(self.labels.device))
            y = y.to(self.device, non_blocking=True)
        return Batch(x, y)

    def _roll_over(self) -> None:
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0

    def next_batch(self) -> Batch:
        """The next batch, moving on to the next epoch when this one is done."""
        self._roll_over()
        batch = self.batch_at(self.epoch, self.position)
        self.position += 1
        return batch

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch."""
        self._roll_over()
        epoch = self.epoch
        while self.epoch == epoch and self.position < len(self):
            yield self.next_batch()
        self._roll_over()

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int | bool]:
        self._roll_over()
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "num_samples": len(self.data),
            "shuffle": self.shuffle,
            "balance": self.balance,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume. Seed, sample count, shuffle and balance must match. A different batch size or
        world size is converted through the number of samples consumed, exactly when it
        divides by the new global batch, else rounded down with a warning."""
        for key, mine in (
            ("seed", self.seed),
            ("num_samples", len(self.data)),
            ("shuffle", self.shuffle),
            ("balance", self.balance),
        ):
            saved = state.get(key, 0.0) if key == "balance" else state[key]  # older: no key
            if saved != mine:
                raise ValueError(
                    f"cannot resume data order: saved {key}={saved!r}, this loader "
                    f"has {key}={mine!r}"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        saved_global = int(state["batch_size"]) * int(state["world_size"])
        new_global = self.batch_size * self.world_size
        if saved_global != new_global:
            consumed = position * saved_global
            position = consumed // new_global
            if consumed % new_global:
                warnings.warn(
                    f"resuming with global batch {new_global} after {consumed} samples of "
                    f"epoch {epoch} (saved with global batch {saved_global}): "
                    f"{consumed % new_global} samples will be seen again",
                    stacklevel=2,
                )
        self.epoch, self.position = epoch, position
        self._roll_over()
