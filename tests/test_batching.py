"""EncodedSplit and BatchIterator: buckets, padded and masked last batch, seeded shuffling, exact resumption."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jax_adalora.tasks.batching import BatchIterator, EncodedSplit

LENGTHS = [5, 40, 70, 10, 33, 3, 130, 20, 64, 65]


def make_split(lengths=LENGTHS, *, pad=0, fixed_length=False, regression=False) -> EncodedSplit:
    """Row i holds tokens 1000 + i (so rows are recognisable), then ``pad``."""
    lengths = np.asarray(lengths, np.int32)
    width = int(lengths.max())
    mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, 1000 + np.arange(len(lengths))[:, None], pad).astype(np.int32)
    labels = np.arange(len(lengths), dtype=np.float32 if regression else np.int32)
    return EncodedSplit(
        ids, mask, np.zeros_like(ids), lengths, labels=labels, pad_token_id=pad, fixed_length=fixed_length
    )


def rows_of(batch):
    return batch["input_ids"][:, 0] - 1000


def test_batches_pad_to_the_smallest_fitting_bucket():
    it = BatchIterator(make_split(), 3, shuffle=False, seed=0, bucket_lengths=(32, 64, 128), pad_to_multiple_of=1)
    batches = list(it)
    assert it.steps_per_epoch == len(batches) == 4
    assert [b["input_ids"].shape for b in batches] == [(3, 128), (3, 64), (3, 130), (3, 128)]
    # longest 70 -> 128, 33 -> 64, 130 exceeds every bucket -> its own length, 65 -> 128
    first = batches[0]
    assert first["attention_mask"][1].sum() == 40 and first["attention_mask"].dtype == np.int32
    assert first["token_type_ids"].shape == (3, 128) and first["labels"].tolist() == [0, 1, 2]


def test_widths_are_rounded_up_to_a_multiple_of_8_by_default_and_the_extra_columns_are_padding():
    split = make_split(pad=7)
    batches = list(BatchIterator(split, 3, shuffle=False, seed=0, bucket_lengths=(32, 64, 128)))
    assert [b["input_ids"].shape[1] for b in batches] == [128, 64, 136, 128]  # 130 -> 136
    wide = batches[2]
    np.testing.assert_array_equal(wide["input_ids"][:, :130], split.input_ids[6:9])
    assert (wide["input_ids"][:, 130:] == 7).all()
    for name in ("attention_mask", "token_type_ids"):
        assert (wide[name][:, 130:] == 0).all()
    # Any multiple; buckets that are not multiples of it are rounded too.
    by_5 = BatchIterator(split, 3, shuffle=False, seed=0, bucket_lengths=(32, 64, 128), pad_to_multiple_of=5)
    assert [b["input_ids"].shape[1] for b in by_5] == [130, 65, 130, 130]
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        BatchIterator(split, 3, shuffle=False, seed=0, pad_to_multiple_of=0)


def test_buckets_wider_than_the_split_stop_at_its_width():
    """A split cut at max_seq_length 20 never pads to a wider bucket (32): the width is the split's."""
    split = make_split([5, 20, 9], pad=7)
    (batch,) = list(BatchIterator(split, 3, shuffle=False, seed=0, bucket_lengths=(8, 32), pad_to_multiple_of=1))
    assert batch["input_ids"].shape == (3, 20)
    np.testing.assert_array_equal(batch["input_ids"], split.input_ids)
    assert (batch["input_ids"][0, 5:] == 7).all() and (batch["attention_mask"][0, 5:] == 0).all()
    (short,) = list(BatchIterator(split.select(np.array([0, 2])), 2, shuffle=False, seed=0, bucket_lengths=(8, 32)))
    assert short["input_ids"].shape[1] <= 24  # 20 rounded up to a multiple of 8


def test_last_partial_batch_is_padded_and_masked_never_dropped():
    it = BatchIterator(make_split(regression=True), 4, shuffle=False, seed=0)
    batches = list(it)
    assert len(batches) == 3
    last = batches[-1]
    assert last["example_mask"].tolist() == [1, 1, 0, 0]
    assert last["example_index"].tolist() == [8, 9, 8, 8]  # fillers copy the first real row
    assert rows_of(last).tolist() == [8, 9, 8, 8] and last["labels"].dtype == np.float32
    real = np.concatenate([rows_of(b)[b["example_mask"] == 1] for b in batches])
    assert real.tolist() == list(range(10))


def test_training_drops_the_remainder_unless_the_split_is_smaller_than_a_batch():
    it = BatchIterator(make_split(), 4, shuffle=True, seed=0)
    assert it.steps_per_epoch == 2 and all(b["example_mask"].all() for b in it)
    tiny = BatchIterator(make_split([3, 4]), 4, shuffle=True, seed=0)
    assert tiny.steps_per_epoch == 1 and tiny.next_batch()["example_mask"].tolist() == [1, 1, 0, 0]
    keep = BatchIterator(make_split(), 4, shuffle=True, seed=0, drop_remainder=False)
    assert keep.steps_per_epoch == 3


def test_shuffling_is_seeded_per_epoch():
    def epochs(seed, n=3):
        it = BatchIterator(make_split(), 5, shuffle=True, seed=seed)
        return [np.concatenate([rows_of(it.next_batch()) for _ in range(it.steps_per_epoch)]) for _ in range(n)]

    a, b, c = epochs(0), epochs(0), epochs(1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert sorted(a[0].tolist()) == list(range(10))
    assert not np.array_equal(a[0], a[1])  # a new order every epoch
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    np.testing.assert_array_equal(a[1], np.random.default_rng([0, 1]).permutation(10))  # the documented order


def test_state_and_restore_resume_exactly():
    it = BatchIterator(make_split(), 3, shuffle=True, seed=5)
    for _ in range(5):  # into the second epoch
        it.next_batch()
    saved = json.loads(json.dumps(it.state()))
    assert saved["epoch"] == 1 and saved["position"] == 2 and saved["seed"] == 5
    expected = [it.next_batch() for _ in range(7)]
    resumed = BatchIterator(make_split(), 3, shuffle=True, seed=5).restore(saved)
    for want in expected:
        got = resumed.next_batch()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    with pytest.raises(ValueError, match="seed=5, this one has 6"):
        BatchIterator(make_split(), 3, shuffle=True, seed=6).restore(saved)
    with pytest.raises(ValueError, match="num_rows=10, this one has 2"):
        BatchIterator(make_split([1, 2]), 3, shuffle=True, seed=5).restore(saved)


def test_iteration_yields_the_rest_of_the_epoch():
    it = BatchIterator(make_split(), 3, shuffle=False, seed=0)
    it.next_batch()
    assert len(list(it)) == 3
    assert it.state()["epoch"] == 0 and len(list(it)) == 4  # the next pass is a whole new epoch
    assert it.state()["epoch"] == 1


def test_fixed_length_splits_keep_their_width():
    it = BatchIterator(make_split([5, 9, 3, 40], fixed_length=True), 2, shuffle=False, seed=0)
    assert [b["input_ids"].shape for b in it] == [(2, 40), (2, 40)]
    odd = BatchIterator(make_split([5, 9, 3, 37], fixed_length=True), 2, shuffle=False, seed=0)
    assert [b["input_ids"].shape for b in odd] == [(2, 40), (2, 40)]  # still one width for all batches
    exact = BatchIterator(make_split([5, 37], fixed_length=True), 2, shuffle=False, seed=0, pad_to_multiple_of=1)
    assert exact.next_batch()["input_ids"].shape == (2, 37)


def test_select_and_bad_arguments():
    split = make_split().select(np.array([3, 1]))
    assert len(split) == 2 and split.labels.tolist() == [3, 1] and split.lengths.tolist() == [10, 40]
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(split, 0, shuffle=False, seed=0)
