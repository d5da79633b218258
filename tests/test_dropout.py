"""Dropout masks from the keyed counter hash: the bits match a numpy reimplementation, and the masks keep the
right fraction with no correlation between neighbours, examples or sites."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_adalora.models.dropout import (
    DropoutKeys,
    dropout,
    dropout_keys,
    example_keys,
    hashed_bits,
    keep_mask,
    shared_dropout,
)


def numpy_mix32(h: np.ndarray) -> np.ndarray:
    h = h.astype(np.uint64)
    mask = np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x7FEB352D)) & mask
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x846CA68B)) & mask
    h ^= h >> np.uint64(16)
    return h


def test_bits_equal_a_numpy_reimplementation_of_the_hash():
    key = jax.random.key(7)
    shape = (3, 5, 17)
    seed = np.asarray(jax.random.bits(key, (2,), jnp.uint32)).astype(np.uint64)
    counter = np.arange(np.prod(shape), dtype=np.uint64)
    expected = numpy_mix32((numpy_mix32(counter ^ seed[0]) + seed[1]) & np.uint64(0xFFFFFFFF))
    np.testing.assert_array_equal(np.asarray(hashed_bits(key, shape)).ravel().astype(np.uint64), expected)


def test_every_bit_is_balanced_and_the_words_of_a_mask_are_distinct():
    bits = np.asarray(hashed_bits(jax.random.key(0), (1 << 18,)))
    assert len(np.unique(bits)) == bits.size  # a bijection of the counter
    ones = np.stack([(bits >> k) & 1 for k in range(32)]).mean(axis=1)
    sigma = 0.5 / np.sqrt(bits.size)
    assert np.all(np.abs(ones - 0.5) < 5 * sigma), ones


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.9])
def test_masks_keep_the_expected_fraction(rate):
    n = 1 << 20
    kept = float(np.mean(np.asarray(keep_mask(jax.random.key(1), rate, (n,)))))
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(kept - (1 - rate)) < 5 * sigma


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def test_masks_are_uncorrelated_across_neighbours_examples_and_sites():
    rate, shape = 0.1, (12, 128, 128)  # one example's attention-probability mask in MiniLM
    keys = example_keys(jax.random.key(3), jnp.arange(4))
    masks = jax.vmap(lambda k, s: keep_mask(jax.random.fold_in(k, s), rate, shape), in_axes=(0, None))
    site_a, site_b = np.asarray(masks(keys, 0)), np.asarray(masks(keys, 1))
    bound = 5 / np.sqrt(np.prod(shape))
    flat = site_a[0].ravel()
    for lag in (1, 2, 128, 128 * 128):  # next key, next query, next head
        assert abs(correlation(flat[:-lag], flat[lag:])) < bound, lag
    for other in range(1, 4):
        assert abs(correlation(site_a[0], site_a[other])) < bound  # another example, same site
        assert abs(correlation(site_a[other], site_b[other])) < bound  # same example, another site
    # A mask shifted against another example's mask must not line up either.
    assert abs(correlation(site_a[0].ravel()[1:], site_a[1].ravel()[:-1])) < bound


def test_dropout_zeroes_or_rescales_and_keeps_the_mean():
    x = jnp.full((8, 4096), 2.0)
    keys = example_keys(jax.random.key(5), jnp.arange(8))
    y = np.asarray(dropout(x, 0.25, keys, site=3))
    assert set(np.unique(y)) <= {0.0, np.float32(2.0 / 0.75)}
    assert abs(y.mean() - 2.0) < 5 * 2.0 * np.sqrt(0.25 / 0.75 / y.size)
    # Deterministic without keys or at rate 0; a rate of 1 or more is refused.
    np.testing.assert_array_equal(dropout(x, 0.25, None, site=3), x)
    np.testing.assert_array_equal(dropout(x, 0.0, keys, site=3), x)
    with pytest.raises(ValueError, match="dropout rate"):
        dropout(x, 1.0, keys, site=3)


def test_a_mask_too_large_for_the_counter_is_refused():
    with pytest.raises(ValueError, match="2\\*\\*32"):
        hashed_bits(jax.random.key(0), (1 << 16, 1 << 16))


def test_step_keys_hold_the_example_keys_and_a_shared_key_of_the_step_alone():
    step_key, index = jax.random.key(11), jnp.arange(5)
    keys = dropout_keys(step_key, index)
    assert isinstance(keys, DropoutKeys)
    expected = jax.random.key_data(example_keys(step_key, index))
    np.testing.assert_array_equal(jax.random.key_data(keys.examples), expected)
    # The shared key depends on the step key only, and is none of the examples' keys.
    np.testing.assert_array_equal(
        jax.random.key_data(keys.shared), jax.random.key_data(dropout_keys(step_key, jnp.arange(2)).shared)
    )
    assert not (jax.random.key_data(keys.examples) == jax.random.key_data(keys.shared)).all(axis=-1).any()
    # Per-example dropout reads the example keys whether given DropoutKeys or the keys alone.
    x = jnp.ones((5, 64))
    np.testing.assert_array_equal(dropout(x, 0.3, keys, site=2), dropout(x, 0.3, keys.examples, site=2))


def test_shared_dropout_draws_one_mask_per_step_and_site():
    table = jnp.full((16, 256), 3.0)  # no batch axis, as DeBERTa's relative-position table
    keys = dropout_keys(jax.random.key(1), jnp.arange(4))
    y = np.asarray(shared_dropout(table, 0.2, keys, site=5))
    assert set(np.unique(y)) <= {0.0, np.float32(3.0 / 0.8)}
    assert abs((y == 0).mean() - 0.2) < 5 * np.sqrt(0.2 * 0.8 / y.size)
    # Other example keys, same step key: the same mask; another site or step: another mask.
    others = DropoutKeys(example_keys(jax.random.key(2), jnp.arange(4)), keys.shared)
    np.testing.assert_array_equal(shared_dropout(table, 0.2, others, site=5), y)
    assert not np.array_equal(shared_dropout(table, 0.2, keys, site=6), y)
    assert not np.array_equal(shared_dropout(table, 0.2, dropout_keys(jax.random.key(3), jnp.arange(4)), site=5), y)
    # Evaluation, rate checks, and per-example keys alone are refused with a message naming what to pass.
    np.testing.assert_array_equal(shared_dropout(table, 0.2, None, site=5), table)
    np.testing.assert_array_equal(shared_dropout(table, 0.0, keys, site=5), table)
    with pytest.raises(ValueError, match="dropout rate"):
        shared_dropout(table, 1.5, keys, site=5)
    with pytest.raises(TypeError, match="dropout_keys"):
        shared_dropout(table, 0.2, keys.examples, site=5)


def test_a_leading_block_gets_the_full_tensors_masks_on_that_block():
    key = jax.random.key(11)
    full = np.asarray(hashed_bits(key, (4, 9, 9)))
    np.testing.assert_array_equal(hashed_bits(key, (4, 1, 9), full_shape=(4, 9, 9)), full[:, :1, :])
    np.testing.assert_array_equal(hashed_bits(key, (2, 3, 5), full_shape=(4, 9, 9)), full[:2, :3, :5])
    np.testing.assert_array_equal(hashed_bits(key, (4, 9, 9), full_shape=(4, 9, 9)), full)
    # Through dropout, per example: the first rows of a (B, 9, 7) tensor's dropout are the dropout of its first rows.
    keys = dropout_keys(jax.random.key(2), jnp.arange(3))
    x = jax.random.normal(jax.random.key(5), (3, 9, 7))
    whole = np.asarray(dropout(x, 0.4, keys, site=8))
    np.testing.assert_array_equal(dropout(x[:, :2], 0.4, keys, site=8, full_shape=(9, 7)), whole[:, :2])
    with pytest.raises(ValueError, match="does not fit"):
        hashed_bits(key, (5, 1, 9), full_shape=(4, 9, 9))
    with pytest.raises(ValueError, match="does not fit"):
        hashed_bits(key, (4, 9), full_shape=(4, 9, 9))


def test_bfloat16_dropout_scales_in_float32_and_rounds_once():
    """A bf16 ``x / 0.9`` would divide by bf16(0.9) = 0.8984 (every kept value 0.17 % too large); the scale is
    applied in float32, so the bf16 result is the float32 path's result rounded once, and its mean over kept
    values is ``x / keep`` to within bf16's unbiased rounding (about 4e-3 / sqrt(n); bound 2e-4 for n = 2**18)."""
    rate, keep = 0.1, 0.9
    keys = example_keys(jax.random.key(4), jnp.arange(4))
    x = jax.random.normal(jax.random.key(6), (4, 1 << 16)).astype(jnp.bfloat16)
    y = dropout(x, rate, keys, site=1)
    assert y.dtype == jnp.bfloat16
    reference = dropout(x.astype(jnp.float32), rate, keys, site=1)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(reference.astype(jnp.bfloat16)))
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    kept = y64 != 0
    ratio = np.sum(y64[kept] * x64[kept]) / np.sum(x64[kept] ** 2)  # least-squares scale of the kept values
    assert abs(ratio * keep - 1.0) < 2e-4, ratio * keep - 1.0  # the bf16 divisor gave 1.7e-3
    table = jnp.full((16, 256), 1.5, jnp.bfloat16)
    shared = shared_dropout(table, rate, dropout_keys(jax.random.key(1), jnp.arange(2)), site=5)
    assert set(np.unique(np.asarray(shared, np.float32))) <= {0.0, float(jnp.bfloat16(1.5 / keep))}
