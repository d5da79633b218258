import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_adalora.allocator import (
    budget_schedule,
    find_allocator_state,
    mask_to_budget,
    rank_allocator,
    ranks,
    reallocation_steps,
)
from jax_adalora.config import AdaLoRAConfig
from jax_adalora.stats import batch_gradient_moments


def _triplets(key, shapes=(("l0.q", 6, 5), ("l0.v", 6, 5), ("l1.q", 4, 6)), r=4):
    out = {}
    for path, d_out, d_in in shapes:
        key, kp, kl, kq = jax.random.split(key, 4)
        out[path] = {
            "P": jax.random.normal(kp, (d_out, r)),
            "lam": jax.random.normal(kl, (r,)),
            "Q": jax.random.normal(kq, (r, d_in)),
        }
    return out


def test_schedule_phases():
    schedule = budget_schedule(init_budget=100, target_budget=40, t_init=10, t_final=20, total_steps=100, delta_t=5)
    assert tuple(map(int, schedule(0))) == (100, 0)
    assert tuple(map(int, schedule(10))) == (100, 0)
    assert int(schedule(11)[0]) < 100
    assert bool(schedule(15)[1]) and not bool(schedule(16)[1])
    assert tuple(map(int, schedule(80))) == (40, 1)  # t = T - t_final: cubic reaches the target
    assert tuple(map(int, schedule(81))) == (40, 1)
    assert tuple(map(int, schedule(10_000))) == (40, 1)
    budgets = [int(schedule(t)[0]) for t in range(101)]
    assert all(a >= b for a, b in zip(budgets, budgets[1:], strict=False))
    jitted = jax.jit(schedule)
    assert [int(jitted(t)[0]) for t in range(101)] == budgets


def test_schedule_rejects_no_budgeting_phase():
    with pytest.raises(ValueError, match="t_init=50 must be < total_steps - t_final"):
        budget_schedule(10, 5, t_init=50, t_final=50, total_steps=100, delta_t=1)


def test_mask_keeps_exactly_budget_with_distinct_scores():
    rng = np.random.default_rng(0)
    scores = {"a": jnp.asarray(rng.permutation(12)[:5], jnp.float32), "b": jnp.asarray(rng.normal(size=7))}
    flat = np.concatenate([np.asarray(v) for v in scores.values()])
    for budget in range(0, 13):
        keep = mask_to_budget(scores, budget)
        kept = np.concatenate([np.asarray(v) for v in keep.values()])
        assert kept.sum() == min(budget, 12)
        if 0 < budget < 12:
            assert flat[kept].min() > flat[~kept].max()


def test_mask_ties_at_threshold_are_all_masked():
    scores = {"a": jnp.array([1.0, 2.0, 2.0, 3.0])}
    keep = mask_to_budget(scores, 2)  # k = 2: threshold = 2.0, both 2.0s masked
    np.testing.assert_array_equal(keep["a"], [False, False, False, True])


def test_allocator_in_a_jitted_optax_chain_reaches_the_target_budget():
    config = AdaLoRAConfig(r_init=4, r_target=2, t_init=3, t_final=4, delta_t=2, score="sensitivity")
    total = 20
    params = _triplets(jax.random.key(0))
    for p in params.values():
        p["lam"] = jnp.zeros_like(p["lam"])  # PEFT's init: λ = 0
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2), rank_allocator(config, total))
    state = tx.init(params)

    def loss(p, x):
        return sum(jnp.sum(jnp.tanh(t["P"] @ (t["lam"] * (t["Q"] @ x[: t["Q"].shape[1]])))) for t in p.values())

    @jax.jit
    def step(params, state, x):
        grads = jax.grad(loss)(params, x)
        updates, state = tx.update(grads, state, params, moments=batch_gradient_moments(grads, 1.0))
        return optax.apply_updates(params, updates), state

    budgets = []
    for t in range(1, total + 1):
        params, state = step(params, state, jax.random.normal(jax.random.key(t), (6,)))
        alloc = find_allocator_state(state)
        assert int(alloc.count) == t
        budgets.append(sum(ranks(alloc).values()))
        if t > total - config.t_final:
            for path, keep in alloc.keep.items():
                assert np.all(np.asarray(params[path]["lam"])[~np.asarray(keep)] == 0.0)
    assert budgets[0] == 12 and budgets[-1] == config.r_target * 3
    frozen = budgets[total - config.t_final - 1 :]
    assert len(set(frozen)) == 1


def test_allocator_needs_params_and_moments():
    config = AdaLoRAConfig(r_init=4, r_target=2)
    params = _triplets(jax.random.key(1))
    tx = rank_allocator(config, 10)
    state = tx.init(params)
    moments = batch_gradient_moments(params, 1.0)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, state, None, moments=moments)
    with pytest.raises(TypeError):
        tx.update(params, state, params)


def test_triplets_are_found_by_name_and_other_entries_pass_through():
    config = AdaLoRAConfig(r_init=4, r_target=1, delta_t=1)
    tree = {"adapters": _triplets(jax.random.key(2)), "head": {"w": jnp.ones((3,))}}
    tx = rank_allocator(config, 5)
    state = tx.init(tree)
    updates = jax.tree.map(jnp.zeros_like, tree)
    grads = jax.tree.map(jnp.ones_like, tree)
    for _ in range(5):
        new_updates, state = tx.update(updates, state, tree, moments=batch_gradient_moments(grads, 1.0))
    chex.assert_trees_all_equal(new_updates["head"], updates["head"])
    assert sum(ranks(state).values()) == 3
    assert set(ranks(state)) == {f"adapters.{path}" for path in tree["adapters"]}


def test_update_scores_false_leaves_the_smoothed_scores_alone():
    config = AdaLoRAConfig(r_init=4, r_target=2, t_init=2, t_final=2)
    params = _triplets(jax.random.key(3))
    tx = rank_allocator(config, 10)
    state = tx.init(params)
    moments = batch_gradient_moments(jax.tree.map(jnp.ones_like, params), 1.0)
    zeros = jax.tree.map(jnp.zeros_like, params)
    update = jax.jit(lambda s, flag: tx.update(zeros, s, params, moments=moments, update_scores=flag))
    _, skipped = update(state, jnp.asarray(False))
    chex.assert_trees_all_equal(skipped.smoothing, state.smoothing)
    assert int(skipped.count) == 1  # the step still counts
    _, scored = update(state, jnp.asarray(True))
    assert all(float(jnp.max(s)) > 0 for s in jax.tree.leaves(scored.smoothing.ema))


@pytest.mark.parametrize(
    ("t_init", "t_final", "total", "delta_t"), [(6, 13, 64, 2), (0, 0, 2, 2), (3, 6, 32, 5), (10, 0, 30, 1)]
)
def test_reallocation_steps_match_the_allocator_rule(t_init, t_final, total, delta_t):
    schedule = budget_schedule(576, 288, t_init, t_final, total, delta_t)
    freeze = total - t_final
    # rank_allocator re-allocates when (mask_now and t < freeze) or t == freeze
    expected = [t for t in range(1, total + 1) if (schedule.mask_now[t] and t < freeze) or t == freeze]
    assert reallocation_steps(t_init=t_init, t_final=t_final, total_steps=total, delta_t=delta_t) == expected


def test_pooled_smoothing_ranks_by_the_moments_since_the_last_reallocation():
    """``smoothing="pooled"`` with GSNR: at each re-allocation the triplets are ranked by GSNR over every example
    since the previous one (a numpy float64 reference from the stacked per-example gradients), and the pool
    restarts; between re-allocations it only grows."""
    from jax_adalora.allocator import find_triplets, reallocation_steps
    from jax_adalora.scores import triplet_importance
    from jax_adalora.stats import moments_of_per_example_gradients

    config = AdaLoRAConfig(r_init=4, r_target=2, t_init=2, t_final=3, delta_t=3, score="gsnr", smoothing="pooled")
    total = 14
    params = _triplets(jax.random.key(5))
    tx = rank_allocator(config, total)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    update = jax.jit(lambda s, m: tx.update(zeros, s, params, moments=m))
    rng = np.random.default_rng(0)
    steps = set(reallocation_steps(t_init=2, t_final=3, total_steps=total, delta_t=3))
    since_last = []
    for step in range(1, total - 2):  # through the freeze step, 11, whose re-allocation pools its own batch
        per_example = jax.tree.map(lambda p: rng.normal(0.3, 1.0, size=(6, *p.shape)), params)
        since_last.append(per_example)
        moments = moments_of_per_example_gradients(jax.tree.map(jnp.asarray, per_example), jnp.ones(6))
        pool_before = state.smoothing
        _, state = update(state, moments)
        if step in steps:
            stacked = jax.tree.map(lambda *g: np.concatenate(g), *since_last)
            reference = jax.tree.map(lambda g: g.mean(0) ** 2 / (g.var(0) + 1e-12), stacked)
            want = triplet_importance(find_triplets(jax.tree.map(jnp.asarray, reference)))
            expected = mask_to_budget(want, int(state.budget))
            for path in expected:
                np.testing.assert_array_equal(state.keep[path], expected[path], err_msg=f"step {step} {path}")
            assert float(state.smoothing.count) == 0.0  # the pool restarts
            since_last = []
        else:
            assert float(state.smoothing.count) == float(pool_before.count) + 6
    assert sum(ranks(state).values()) == 2 * len(params)  # the target budget, r_target per matrix


@pytest.mark.parametrize("score", ["gsnr", "fisher"])
def test_pooled_smoothing_reaches_the_target_when_the_freeze_step_follows_a_reallocation(score):
    """With ΔT = 1 the step before the freeze step re-allocates and empties the pool; the freeze step's own
    batch is pooled, so its re-allocation ranks real moments and keeps exactly the target budget (an empty pool
    would score every triplet 0 and, ties at the threshold being masked, keep none)."""
    from jax_adalora.stats import moments_of_per_example_gradients

    config = AdaLoRAConfig(r_init=4, r_target=2, t_init=1, t_final=2, delta_t=1, score=score, smoothing="pooled")
    total = 8
    params = _triplets(jax.random.key(6))
    tx = rank_allocator(config, total)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    update = jax.jit(lambda s, m: tx.update(zeros, s, params, moments=m))
    rng = np.random.default_rng(1)
    for _ in range(total):
        per_example = jax.tree.map(lambda p: jnp.asarray(rng.normal(0.3, 1.0, size=(4, *p.shape))), params)
        _, state = update(state, moments_of_per_example_gradients(per_example, jnp.ones(4)))
    assert int(state.budget) == 2 * len(params)
    assert sum(ranks(state).values()) == 2 * len(params)
