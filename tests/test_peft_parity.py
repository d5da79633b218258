"""Parity with Hugging Face PEFT's AdaLoRA RankAllocator (the reference implementation)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from peft import AdaLoraConfig, get_peft_model

from jax_adalora import scores as scores_lib
from jax_adalora.allocator import budget_schedule, mask_to_budget, rank_allocator
from jax_adalora.config import AdaLoRAConfig
from jax_adalora.stats import batch_gradient_moments

PATHS = ("lin1", "lin2", "lin3")


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1 = torch.nn.Linear(6, 5)
        self.lin2 = torch.nn.Linear(5, 7)
        self.lin3 = torch.nn.Linear(7, 3)

    def forward(self, x):
        return self.lin3(torch.tanh(self.lin2(torch.tanh(self.lin1(x)))))


def _peft_model(init_r, target_r, tinit, tfinal, delta_t, total):
    torch.manual_seed(0)
    config = AdaLoraConfig(
        init_r=init_r,
        target_r=target_r,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=delta_t,
        total_step=total,
        beta1=0.85,
        beta2=0.85,
        target_modules=list(PATHS),
    )
    return get_peft_model(_Tiny(), config)


def _lora_params(model):
    """{path: {"A": param, "E": param, "B": param}} of the PEFT model."""
    out = {p: {} for p in PATHS}
    for name, param in model.named_parameters():
        for path in PATHS:
            for kind in ("A", "E", "B"):
                if f".{path}.lora_{kind}.default" in name:
                    out[path][kind] = param
    return out


def _peft_score(allocator, path, kind):
    """PEFT's smoothed element score (exp_avg_ipt * exp_avg_unc) of one lora_{A,E,B} matrix."""
    (name,) = [n for n in allocator.exp_avg_ipt if f"{path}.lora_{kind}." in n]
    return allocator._element_score(name).numpy()


def _to_triplets(lora):
    return {
        path: {
            "P": jnp.asarray(t["B"].detach().numpy()),
            "lam": jnp.asarray(t["E"].detach().numpy()[:, 0]),
            "Q": jnp.asarray(t["A"].detach().numpy()),
        }
        for path, t in lora.items()
    }


@pytest.mark.parametrize(
    "init_r, target_r, tinit, tfinal, delta_t, total",
    [
        (12, 8, 0, 0, 1, 200),
        (16, 8, 30, 50, 10, 400),
        (3, 1, 600, 1800, 1, 5000),
        (2, 1, 8000, 25000, 100, 60000),
    ],
)
def test_budget_schedule_equals_peft_at_every_step(init_r, target_r, tinit, tfinal, delta_t, total):
    model = _peft_model(init_r, target_r, tinit, tfinal, delta_t, total)
    allocator = model.base_model.rankallocator
    ours = budget_schedule(allocator.init_bgt, allocator.target_bgt, tinit, tfinal, total, delta_t)
    budgets = np.asarray(ours.budgets)
    flags = np.asarray(ours.mask_now)
    for step in range(total + 2):
        budget, mask_ind = allocator.budget_schedule(step)
        assert (int(budgets[step]), bool(flags[step])) == (budget, bool(mask_ind)), step
    # and the jit-able call agrees with the table
    for step in (0, tinit, tinit + 1, total // 2, total - tfinal, total, total + 5):
        b, m = ours(step)
        assert (int(b), bool(m)) == allocator.budget_schedule(step)


def test_sensitivity_scores_and_masks_equal_peft_over_a_run():
    """Same A/E/B values, same gradients and optimizer updates: same scores, masks and λ every step."""
    init_r, target_r, tinit, tfinal, delta_t, total = 4, 2, 3, 4, 2, 16
    model = _peft_model(init_r, target_r, tinit, tfinal, delta_t, total)
    allocator = model.base_model.rankallocator
    lora = _lora_params(model)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for t in lora.values():
            t["E"].copy_(torch.from_numpy(rng.normal(size=tuple(t["E"].shape)).astype(np.float32)))
    params = _to_triplets(lora)
    config = AdaLoRAConfig(
        r_init=init_r, r_target=target_r, t_init=tinit, t_final=tfinal, delta_t=delta_t, score="sensitivity"
    )
    tx = rank_allocator(config, total)
    state = tx.init(params)
    checked_scores = 0

    for step in range(1, total + 1):
        grads_np = {
            p: {k: rng.normal(size=tuple(v.shape)).astype(np.float32) for k, v in t.items()} for p, t in lora.items()
        }
        updates_np = {
            p: {k: 0.01 * rng.normal(size=tuple(v.shape)).astype(np.float32) for k, v in t.items()}
            for p, t in lora.items()
        }
        # PEFT: optimizer step (here: a given update), then update_and_allocate with the step's gradient.
        with torch.no_grad():
            for p, t in lora.items():
                for k, param in t.items():
                    param.add_(torch.from_numpy(updates_np[p][k]))
                    param.grad = torch.from_numpy(grads_np[p][k])
        model.base_model.update_and_allocate(step)

        grads = {p: {"P": g["B"], "lam": g["E"][:, 0], "Q": g["A"]} for p, g in grads_np.items()}
        updates = {p: {"P": u["B"], "lam": u["E"][:, 0], "Q": u["A"]} for p, u in updates_np.items()}
        grads = {p: {k: jnp.asarray(v) for k, v in g.items()} for p, g in grads.items()}
        updates = {p: {k: jnp.asarray(v) for k, v in u.items()} for p, u in updates.items()}
        new_updates, state = tx.update(updates, state, params, moments=batch_gradient_moments(grads, 1.0))
        params = {p: {k: params[p][k] + new_updates[p][k] for k in ("P", "lam", "Q")} for p in params}

        # Element scores (PEFT resets them at T - t_final, so compare before that).
        if step < total - tfinal:
            ours = scores_lib.smoothed_score("adalora", state.smoothing)
            for path in PATHS:
                np.testing.assert_allclose(ours[path]["Q"], _peft_score(allocator, path, "A"), rtol=1e-6, atol=1e-12)
                np.testing.assert_allclose(ours[path]["P"], _peft_score(allocator, path, "B"), rtol=1e-6, atol=1e-12)
                ref_e = _peft_score(allocator, path, "E")[:, 0]
                np.testing.assert_allclose(ours[path]["lam"], ref_e, rtol=1e-6, atol=1e-12)
                checked_scores += 1
            # Triplet scores through our aggregation equal PEFT's combination.
            triplet = scores_lib.triplet_importance(ours)
            for path in PATHS:
                ref = (
                    _peft_score(allocator, path, "E")[:, 0]
                    + _peft_score(allocator, path, "A").mean(axis=1)
                    + _peft_score(allocator, path, "B").mean(axis=0)
                )
                np.testing.assert_allclose(triplet[path], ref, rtol=1e-6)
        # λ after masking equals PEFT's E, every step.
        for path in PATHS:
            np.testing.assert_allclose(
                params[path]["lam"], lora[path]["E"].detach().numpy()[:, 0], rtol=1e-6, atol=1e-7
            )
    assert checked_scores > 0
    pattern = model.peft_config["default"].rank_pattern
    ours_pattern = {p: list(map(bool, np.asarray(k))) for p, k in state.keep.items()}
    for name, kept in pattern.items():
        path = next(p for p in PATHS if f".{p}." in "." + name)
        assert ours_pattern[path] == kept
    assert sum(map(sum, ours_pattern.values())) == target_r * len(PATHS)


def test_mask_to_budget_equals_peft_mask():
    model = _peft_model(4, 2, 0, 0, 1, 10)
    allocator = model.base_model.rankallocator
    lora = _lora_params(model)
    rng = np.random.default_rng(3)
    with torch.no_grad():
        for t in lora.values():
            for param in t.values():
                param.grad = torch.from_numpy(rng.normal(size=tuple(param.shape)).astype(np.float32))
                param.copy_(torch.from_numpy(rng.normal(size=tuple(param.shape)).astype(np.float32)))
    allocator.update_ipt(model)
    allocator.update_ipt(model)
    params = _to_triplets(lora)
    element = {}
    for path, t in lora.items():
        names = {k: n for n, prm in model.named_parameters() for k in "AEB" if prm is t[k]}
        element[path] = {
            "P": jnp.asarray(allocator._element_score(names["B"]).numpy()),
            "lam": jnp.asarray(allocator._element_score(names["E"]).numpy()[:, 0]),
            "Q": jnp.asarray(allocator._element_score(names["A"]).numpy()),
        }
    del params
    for budget in (2, 5, 7, 11):
        keep = mask_to_budget(scores_lib.triplet_importance(element), budget)
        reference = allocator.mask_to_budget(model, budget)
        for name, kept in reference.items():
            path = next(p for p in PATHS if f".{p}." in "." + name)
            assert list(map(bool, np.asarray(keep[path]))) == kept, (budget, path)


def test_training_loss_and_gradients_equal_peft_adalora(tmp_path):
    """Our training objective (task loss + γ · orthogonal regularisation) and its gradients for the adapters,
    classifier and pooler equal PEFT's AdaLoRA on transformers' BERT with the same weights (dropout off)."""
    import jax
    from flax import nnx
    from tiny_assets import make_tiny_bert
    from transformers import AutoModelForSequenceClassification

    from jax_adalora.adapters import adapter_modules, get_triplets, inject_adapters, set_triplets, trainable_filter
    from jax_adalora.cli.export import hf_module_names, peft_adalora_config
    from jax_adalora.cli.run_config import build_run_config
    from jax_adalora.cli.step import task_losses_fn
    from jax_adalora.models import from_pretrained
    from jax_adalora.moments import value_grad_and_moments
    from jax_adalora.training import FunctionalModel, orthogonal_penalty

    model_dir = make_tiny_bert(tmp_path / "bert", num_labels=2)
    run = build_run_config({"model": str(model_dir), "r_init": 4, "r_target": 2, "orth_reg_weight": 0.3})
    model = from_pretrained(model_dir, head="classification", num_labels=2)
    inject_adapters(model, run.adalora, rngs=nnx.Rngs(1))
    triplets = get_triplets(model)
    for i, t in enumerate(triplets.values()):
        t["lam"] = jax.random.normal(jax.random.key(i), t["lam"].shape) * 0.3
    set_triplets(model, triplets)

    names = hf_module_names(model)
    peft_model = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2),
        peft_adalora_config(
            run.adalora,
            total_steps=100,
            target_modules=sorted(set(names.values())),
            modules_to_save=["classifier", "pooler"],
            task_type="SEQ_CLS",
        ),
    ).eval()
    inner = peft_model.base_model.model
    with torch.no_grad():
        for path, adapter in adapter_modules(model).items():
            layer = inner.get_submodule(names[path])
            layer.lora_A["default"].copy_(torch.from_numpy(np.array(adapter.Q[...])))
            layer.lora_E["default"].copy_(torch.from_numpy(np.array(adapter.lam[...]))[:, None])
            layer.lora_B["default"].copy_(torch.from_numpy(np.array(adapter.P[...])))

    rng = np.random.default_rng(0)
    inputs = {
        "input_ids": rng.integers(1000, 30000, (4, 9)),
        "attention_mask": np.array([[1] * 9, [1] * 6 + [0] * 3, [1] * 4 + [0] * 5, [1] * 9]),
        "token_type_ids": np.zeros((4, 9), np.int64),
    }
    labels = np.array([0, 1, 1, 0])
    torch_out = peft_model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, labels=torch.from_numpy(labels))
    torch_out.loss.backward()

    functional = FunctionalModel(model, trainable_filter(run.train.head_pattern))
    batch = {**{k: jnp.asarray(v, jnp.int32) for k, v in inputs.items()}, "labels": jnp.asarray(labels)}
    batch["example_index"] = jnp.arange(4)
    losses_fn = task_losses_fn("classification", jax.random.key(0), dropout=False)
    # The training step's own call: task loss plus γ · orthogonal regularisation, gradients of every trained variable.
    loss, grads, _ = value_grad_and_moments(
        losses_fn,
        model,
        batch,
        statistics="batch",
        wrt=functional.trainable,
        penalty_fn=orthogonal_penalty(run.adalora),
    )
    np.testing.assert_allclose(float(loss), torch_out.loss.item(), rtol=1e-5)
    task_only, _, _ = value_grad_and_moments(losses_fn, model, batch, statistics="batch", wrt=functional.trainable)
    assert float(loss - task_only) > 0.05  # the regulariser is really in both losses
    grads = {".".join(str(k) for k in path): v.get_value() for path, v in nnx.to_flat_state(grads)}

    for path in names:
        layer = inner.get_submodule(names[path])
        for ours, theirs in (("Q", layer.lora_A), ("lam", layer.lora_E), ("P", layer.lora_B)):
            expected = theirs["default"].grad.numpy().reshape(np.shape(grads[f"{path}.{ours}"]))
            np.testing.assert_allclose(grads[f"{path}.{ours}"], expected, rtol=1e-4, atol=1e-7)
    torch_head = {n: p.grad.numpy() for n, p in peft_model.named_parameters() if p.requires_grad and "lora" not in n}
    pairs = {
        "classifier.kernel": ("classifier.modules_to_save.default.weight", True),
        "classifier.bias": ("classifier.modules_to_save.default.bias", False),
        "pooler.dense.kernel": ("pooler.modules_to_save.default.dense.weight", True),
        "pooler.dense.bias": ("pooler.modules_to_save.default.dense.bias", False),
    }
    for ours, (suffix, transpose) in pairs.items():
        (theirs,) = [g for n, g in torch_head.items() if n.endswith(suffix)]
        np.testing.assert_allclose(grads[ours], theirs.T if transpose else theirs, rtol=1e-4, atol=1e-7)
