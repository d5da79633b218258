"""Tokenised splits as numpy arrays, and a deterministic, resumable, length-bucketed batch iterator.

``EncodedSplit`` holds a whole split, padded to its longest row. ``BatchIterator`` cuts it into batches
of a fixed size, each padded to the smallest of a few bucket lengths that fits its longest row, so a
jitted step compiles at most once per bucket. Widths are then rounded up to a multiple of 8 (tensor-core
tiles on GPU, sublanes on TPU; ``pad_to_multiple_of=1`` keeps the bucket widths). A short last batch is
filled with copies of its first row and flagged by ``example_mask`` (1 real, 0 filler); copies rather
than zeros keep every row a valid input, so padded rows can never turn a masked loss into NaN.

    >>> it = BatchIterator(split, 32, shuffle=True, seed=0)
    >>> batch = it.next_batch()          # {"input_ids": (32, L) int32, ..., "example_mask": (32,)}
    >>> saved = it.state()               # {"epoch": 0, "position": 1, "seed": 0, ...}
    >>> BatchIterator(split, 32, shuffle=True, seed=0).restore(saved)  # continues with batch 2
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np

DEFAULT_BUCKETS = (32, 64, 128, 256, 512)
DEFAULT_PAD_MULTIPLE = 8
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_ROW_FIELDS = ("labels", "start_positions", "end_positions")  # per-row targets that travel with a batch


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedSplit:
    """One tokenised split. Rows are examples (features for QA: one per context window).

    Attributes:
      input_ids, attention_mask, token_type_ids: (N, L) int32, right-padded to the split's longest row.
      lengths: (N,) int32 real tokens per row.
      labels: (N,) int32 class ids, or float32 targets for regression; None for QA.
      start_positions, end_positions: (N,) int32 token indices of the answer (0, the CLS token, when the
        window does not contain it or there is none); QA only.
      feature_to_example: (N,) int32 index of the example a QA feature belongs to.
      offsets: (N, L, 2) int32 character span of each context token in its example's context, -1 for
        other tokens; QA only.
      pad_token_id: the tokenizer's padding id, used when a bucket is wider than L.
      fixed_length: batches keep the full width L (QA: per-token logits of all batches concatenate).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray | None = None
    start_positions: np.ndarray | None = None
    end_positions: np.ndarray | None = None
    feature_to_example: np.ndarray | None = None
    offsets: np.ndarray | None = None
    pad_token_id: int = 0
    fixed_length: bool = False

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    def select(self, rows: np.ndarray) -> EncodedSplit:
        """The split restricted to ``rows`` (in that order); QA example indices are kept as they are."""
        rows = np.asarray(rows)
        take = lambda a: None if a is None else a[rows]
        return dataclasses.replace(self, **{f.name: take(getattr(self, f.name)) for f in _array_fields()})


def _array_fields():
    return [f for f in dataclasses.fields(EncodedSplit) if f.name not in ("pad_token_id", "fixed_length")]


def pad_rows(rows: Sequence[Sequence[int]], pad_value: int = 0, width: int | None = None) -> np.ndarray:
    """Ragged int rows -> (N, width) int32, right-padded (width: the longest row by default)."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = np.full((len(rows), width), pad_value, np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def from_token_lists(tokenizer, ids, types, **fields) -> EncodedSplit:
    """An ``EncodedSplit`` from ragged token ids and token types (plus optional per-row fields)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lengths = np.array([len(r) for r in ids], np.int32)
    input_ids = pad_rows(ids, pad_id)
    attention_mask = (np.arange(input_ids.shape[1])[None, :] < lengths[:, None]).astype(np.int32)
    return EncodedSplit(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=pad_rows(types, 0, input_ids.shape[1]),
        lengths=lengths,
        pad_token_id=int(pad_id),
        **fields,
    )


class BatchIterator:
    """Fixed-size, length-bucketed batches of an ``EncodedSplit``; deterministic and resumable.

    Epoch ``e`` visits the rows in the order ``np.random.default_rng([seed, e]).permutation(N)`` when
    ``shuffle``, else in split order. Iterating (``for batch in it``) yields the rest of the current
    epoch, so a fresh iterator yields exactly one epoch (what evaluation wants); ``next_batch()`` runs on
    across epochs (what training wants). ``state()`` / ``restore()`` resume at the same batch.

    Args:
      split: the data.
      batch_size: rows per batch, filler rows included.
      shuffle: reshuffle every epoch (seeded).
      seed: the shuffling seed.
      bucket_lengths: allowed padded widths; a batch gets the smallest one that fits its longest row
        (the row's own length when it exceeds them all). Ignored for ``fixed_length`` splits (QA).
      drop_remainder: drop the last short batch of each epoch; default: when shuffling (training),
        unless the split has fewer rows than ``batch_size``. Evaluation never drops rows.
      pad_to_multiple_of: every padded width is rounded up to a multiple of this (QA's fixed width too);
        the extra columns are padding (``attention_mask`` 0). 1 keeps the widths the buckets give.

    Each batch holds the model inputs, the split's targets, ``example_mask`` (B,) int32 (1 real, 0
    filler) and ``example_index`` (B,) int32 (the row in the split; a filler copies its source's index).
    """

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        bucket_lengths: Sequence[int] = DEFAULT_BUCKETS,
        drop_remainder: bool | None = None,
        pad_to_multiple_of: int = DEFAULT_PAD_MULTIPLE,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        if len(split) == 0:
            raise ValueError("cannot batch an empty split")
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.bucket_lengths = tuple(sorted(int(b) for b in bucket_lengths))
        self.pad_to_multiple_of = int(pad_to_multiple_of)
        if drop_remainder is None:
            drop_remainder = self.shuffle
        self.drop_remainder = bool(drop_remainder) and len(split) >= self.batch_size
        n = len(split)
        self.steps_per_epoch = n // self.batch_size if self.drop_remainder else math.ceil(n / self.batch_size)
        self.epoch = 0
        self.position = 0  # batches already taken from the current epoch
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The row order of ``epoch`` (a pure function of seed and epoch)."""
        if self._order is None or self._order[0] != epoch:
            n = len(self.split)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order = (epoch, order)
        return self._order[1]

    def batch_rows(self, epoch: int, position: int) -> np.ndarray:
        """Split rows of batch ``position`` of ``epoch`` (fewer than ``batch_size`` for a short last batch)."""
        order = self.epoch_order(epoch)
        return order[position * self.batch_size : (position + 1) * self.batch_size]

    def next_batch(self) -> dict[str, np.ndarray]:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        batch = self.make_batch(self.batch_rows(self.epoch, self.position))
        self.position += 1
        return batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        while self.position < self.steps_per_epoch:
            yield self.next_batch()

    def state(self) -> dict:
        """Where the iterator is, as plain ints: enough to resume exactly."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_rows": len(self.split),
        }

    def restore(self, state: dict) -> BatchIterator:
        mine = self.state()
        for key in ("seed", "batch_size", "num_rows"):
            if key in state and int(state[key]) != mine[key]:
                raise ValueError(
                    f"cannot resume: the saved iterator had {key}={state[key]}, this one has {mine[key]} "
                    "(different data or batch settings)"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        return self

    def padded_width(self, rows: np.ndarray) -> int:
        """The width of the batch of ``rows``: its bucket, rounded up to ``pad_to_multiple_of``."""
        if self.split.fixed_length:
            width = self.split.width
        else:
            longest = int(self.split.lengths[rows].max())
            # Never wider than the split's widest row (e.g. max_seq_length 48 with buckets 32, 64 gives 48).
            width = min(next((b for b in self.bucket_lengths if b >= longest), longest), self.split.width)
        return -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

    def make_batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The batch of split ``rows``, filled up to ``batch_size`` and padded to its bucket."""
        rows = np.asarray(rows)
        real = len(rows)
        filled = np.concatenate([rows, np.full(self.batch_size - real, rows[0], rows.dtype)])
        width = self.padded_width(rows)
        split = self.split
        batch = {}
        for name in MODEL_INPUTS:
            array = getattr(split, name)[filled, : min(width, split.width)]
            if width > split.width:
                pad_value = split.pad_token_id if name == "input_ids" else 0
                array = np.pad(array, ((0, 0), (0, width - split.width)), constant_values=pad_value)
            batch[name] = array
        for name in _ROW_FIELDS:
            values = getattr(split, name)
            if values is not None:
                batch[name] = values[filled]
        batch["example_mask"] = (np.arange(self.batch_size) < real).astype(np.int32)
        batch["example_index"] = filled.astype(np.int32)
        return batch
