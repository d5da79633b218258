"""Our AdaLoRA training step against Hugging Face PEFT's, on one model shape and batch (a benchmark, not a test).

In one process, interleaved (each repeat runs every row once, the order rotating from repeat to repeat,
so that machine noise hits all rows alike), on the same batch and the same base weights:

* ours: the full jitted step of :func:`jax_adalora.cli.step.make_train_step` (loss + orthogonal
  regularisation, statistics, clip + AdamW + rank allocator, dropout on) for sensitivity and movement
  (batch gradient), Fisher and GSNR with exact per-example moments, Fisher and GSNR with running moments;
  and, alone, the batch gradient and the per-example moments of the task loss, as the step computes them
  (:func:`jax_adalora.moments.value_grad_and_moments`: exact per-example moments of the adapters from
  one batch backward pass, the head's batch gradient from the same pass);
  before them all, a control copy of the sensitivity step (the first-built step has often been slow in
  every repeat; the control shows whether it was, and stays out of the ratios);
* PEFT: AdaLoRA on transformers' PyTorch model built from our random model's weights
  (``save_pretrained`` then ``AutoModelForSequenceClassification.from_pretrained``): forward, backward,
  clip, AdamW, ``update_and_allocate(step)``, ``zero_grad``; alone, the batch gradient and the
  per-example mean and mean of squares from ``torch.func.vmap(torch.func.grad(...))`` over the trainable
  (adapter + head) parameters (per example for the head too: ``vmap(grad)`` has no batch-only part).

Both sides: r_init 16 -> target 8 on the six matrices per layer, classifier + pooler trained, masking
at every step (t_init = t_final = 0, ΔT = 1), γ = 0.1. Step times are medians over ``--repeats`` after
two warm-up calls; JAX compile time is reported apart. FLOP/s use an analytic count of the model's
forward and backward (frozen weights need input gradients only), as each framework computes it (ours
runs the last layer at the first position alone, the one the classifier reads), and are compared with
the measured rate of a large matmul on each framework. Peak memory: on CPU the growth of process RSS
during one untimed call, sampled every millisecond after the free heap is trimmed (approximate), plus
XLA's own temp-buffer size for our rows; on GPU the frameworks' allocator peaks.

    python -m scripts.benchmarks.bench --repeats 7 --out runs/bench.json        # MiniLM shape, batch 32 x 128
    python -m scripts.benchmarks.bench --model deberta-v3-base --dtype bfloat16 # on a GPU
    python -m scripts.benchmarks.bench --seq-len 32 --batch-size 8 --repeats 2  # a smoke test (~3 min on 2 cores)
    # CPU, 24 GB: DeBERTa-v3-base at 32 x 128, torch's vmap(grad) four examples at a time
    python -m scripts.benchmarks.bench --model deberta-v3-base --repeats 3 --vmap-chunk-size 4
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_adalora.adapters import inject_adapters, trainable_filter
from jax_adalora.cli.report import atomic_write_json
from jax_adalora.cli.runtime import keep_freed_memory, step_compiler_options
from jax_adalora.cli.step import apply_model, make_train_step, task_losses_fn
from jax_adalora.config import AdaLoRAConfig, OptimConfig
from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.heads import SequenceClassifier
from jax_adalora.models.hf_export import save_pretrained
from jax_adalora.moments import value_grad_and_moments
from jax_adalora.training import FunctionalModel, adalora_optimizer, init_train_state

MODELS = {"minilm": EncoderConfig.minilm_l6, "deberta-v3-base": EncoderConfig.deberta_v3_base}
HEAD_PATTERN = r"(classifier|pooler)\..*"  # PEFT side: modules_to_save=["classifier", "pooler"]
# transformers' module names of the six adapted matrices per layer (ours: the "paper" preset).
HF_TARGETS = {
    "bert": r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)",
    "deberta-v2": r".*encoder\.layer\.\d+\.(attention\.self\.(query_proj|key_proj|value_proj)"
    r"|attention\.output\.dense|intermediate\.dense|output\.dense)",
}
ADAPTED_PER_LAYER = 6

SENSITIVITY = "ours: sensitivity step (batch grad)"
# The first JAX step this script built was often slow in every repeat, whichever it was (in one run 4.74 s against
# 3.14 s for the same program built second; the cause was not found), so a copy of the sensitivity step is built
# first as a control: timed and reported, but in no ratio or target.
FIRST_BUILT_CONTROL = "ours: sensitivity, built first (control)"
PEFT_STEP = "peft: AdaLoRA step"
OURS_BATCH_ONLY = "ours: batch gradient only"
OURS_PER_EXAMPLE_ONLY = "ours: per-example moments only"
TORCH_BATCH_ONLY = "torch: batch gradient only"
TORCH_PER_EXAMPLE_ONLY = "torch: vmap(grad) moments only"
OUR_STEPS = {
    SENSITIVITY: dict(score="sensitivity"),
    "ours: movement step (batch grad)": dict(score="movement"),
    "ours: fisher step (per-example)": dict(score="fisher", statistics="per_example"),
    "ours: gsnr step (per-example)": dict(score="gsnr", statistics="per_example"),
    "ours: fisher step (running)": dict(score="fisher", statistics="running"),
    "ours: gsnr step (running)": dict(score="gsnr", statistics="running"),
}


# ---- pure helpers (tested in tests/test_bench_helpers.py) ------------------------------------------


def summarize(times: list[float]) -> dict[str, float]:
    """Median and minimum of timed repeats (seconds)."""
    if not times:
        raise ValueError("no timed repeats")
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}


def matmul_flops(n: int) -> int:
    """FLOPs of an (n, n) @ (n, n) matmul: a multiply and an add per inner-product term."""
    return 2 * n**3


def step_flops(
    config: EncoderConfig,
    batch_size: int,
    seq_len: int,
    rank: int,
    *,
    last_layer_queries: int | None = None,
    skewed_positions: bool = False,
) -> dict[str, int]:
    """Analytic matmul FLOPs of one forward + backward of the adapted classifier.

    Frozen weights need gradients with respect to their inputs only, so their backward costs one
    forward; attention scores and context (activation x activation) and the adapters cost two
    forwards in the backward. DeBERTa's disentangled attention adds c2p and p2c scores against
    ``2 * position_buckets`` relative positions and the projection of those positions, as
    transformers computes them. Element-wise work (softmax, layer norm, GELU, dropout) is not counted.

    ``last_layer_queries``: positions the last layer computes (default all ``seq_len``, as transformers);
    our classifier computes the first alone (``first_token_only``), so its keys and values still run over
    every position, but queries, attention output and FFN over one.

    ``skewed_positions``: as our DeBERTa computes c2p and p2c (``models.deberta.skew``), against the
    ``n + seq_len - 1`` relative positions that occur among ``n`` queries and ``seq_len`` keys instead of the
    whole table, where they fit in it.
    """
    h, inter, b, s = config.hidden_size, config.intermediate_size, batch_size, seq_len
    relative = config.model_type == "deberta-v2" and config.relative_attention
    span = 2 * (config.position_buckets if config.position_buckets > 0 else config.max_position_embeddings)

    def layer(n: int) -> tuple[int, int, int]:
        """(dense, attention, adapters) FLOPs of one layer forward, computing ``n`` of the ``s`` positions."""
        dense = 2 * b * s * (2 * h * h) + 2 * b * n * (2 * h * h + 2 * h * inter)  # k, v; q, out, FFN up, down
        attention = 2 * 2 * b * n * s * h  # scores q kᵀ and context p v
        if relative:
            # c2p: the n queries against the projected table; p2c: the s keys against it.
            rows = n + s - 1 if skewed_positions and n + s - 1 <= span else span
            sides = {"c2p": n, "p2c": s}
            attention += sum(2 * b * sides[kind] * rows * h + 2 * rows * h * h for kind in config.pos_att_type)
        per_token = rank * (h + h)  # one h -> h adapter, per token
        adapters = 2 * b * s * 2 * per_token + 2 * b * n * (2 * per_token + 2 * rank * (h + inter))
        return dense, attention, adapters

    last = layer(s if last_layer_queries is None else last_layer_queries)
    dense, attention, adapters = (
        (config.num_hidden_layers - 1) * full + final for full, final in zip(layer(s), last, strict=True)
    )
    head = 2 * b * h * h + 2 * b * h * 2  # pooler dense and a 2-way classifier
    forward = dense + attention + adapters + head
    backward = dense + 2 * (attention + adapters + head)
    return {"forward": forward, "backward": backward, "total": forward + backward}


def check_target(name: str, value: float, op: str, threshold: float) -> dict:
    """A target ``value op threshold`` (op ``>=`` or ``<=``) with whether it is met."""
    if op not in (">=", "<="):
        raise ValueError(f"op must be '>=' or '<=', got {op!r}")
    met = value >= threshold if op == ">=" else value <= threshold
    return {"target": name, "value": value, "op": op, "threshold": threshold, "met": bool(met)}


def evaluate_targets(medians: dict[str, float], *, on_gpu: bool) -> list[dict]:
    """The project's speed targets from the rows' median step times (rows that are missing are skipped)."""
    out = []
    if SENSITIVITY in medians and PEFT_STEP in medians:
        out.append(
            check_target(
                "PEFT step / our sensitivity step (speed-up)",
                medians[PEFT_STEP] / medians[SENSITIVITY],
                ">=",
                2.0 if on_gpu else 1.5,
            )
        )
    for score in ("fisher", "gsnr"):
        name = f"ours: {score} step (per-example)"
        if name in medians and SENSITIVITY in medians:
            out.append(
                check_target(
                    f"our {score} per-example step / our batch-gradient step",
                    medians[name] / medians[SENSITIVITY],
                    "<=",
                    1.10,
                )
            )
    if OURS_PER_EXAMPLE_ONLY in medians and TORCH_PER_EXAMPLE_ONLY in medians:
        out.append(
            check_target(
                "torch.func vmap(grad) moments / our per-example moments (speed-up)",
                medians[TORCH_PER_EXAMPLE_ONLY] / medians[OURS_PER_EXAMPLE_ONLY],
                ">=",
                1.5,
            )
        )
    return out


def info_ratios(medians: dict[str, float]) -> dict[str, float]:
    """Ratios of median times that say where time goes (no targets attached)."""
    pairs = {
        "our sensitivity step / our batch gradient only (regulariser, statistics, optimizer, allocator)": (
            SENSITIVITY,
            OURS_BATCH_ONLY,
        ),
        "our per-example moments only / our batch gradient only": (OURS_PER_EXAMPLE_ONLY, OURS_BATCH_ONLY),
        "PEFT step / torch batch gradient only (regulariser, optimizer, update_and_allocate)": (
            PEFT_STEP,
            TORCH_BATCH_ONLY,
        ),
        "torch vmap(grad) moments / torch batch gradient only": (TORCH_PER_EXAMPLE_ONLY, TORCH_BATCH_ONLY),
        "torch batch gradient only / our batch gradient only": (TORCH_BATCH_ONLY, OURS_BATCH_ONLY),
        "torch vmap(grad) moments / our whole fisher per-example step": (
            TORCH_PER_EXAMPLE_ONLY,
            "ours: fisher step (per-example)",
        ),
    }
    return {name: medians[a] / medians[b] for name, (a, b) in pairs.items() if a in medians and b in medians}


def contention_warning(load_average: float, cpu_count: int) -> str | None:
    """A warning when other work was running: busy cores slow torch's OpenMP threads far more than XLA's."""
    if load_average <= 0.5:
        return None
    return (
        f"WARNING: 1-minute load average {load_average:.2f} on {cpu_count} CPUs before this run: other jobs "
        "were running, and with every core given to torch its OpenMP threads wait on descheduled peers "
        "(PEFT rows can slow down many-fold). Re-run on a quiet machine before quoting these numbers."
    )


def format_table(rows: list[dict], targets: list[dict], ratios: dict[str, float] | None = None) -> str:
    """The result table: one line per row, then the informative ratios, then one line per target."""

    def cell(value, width: int, precision: int, scale: float = 1.0) -> str:
        return f"{scale * value:{width}.{precision}f}" if value is not None else "-".rjust(width)

    header = (
        f"{'row':40}{'median s':>10}{'min s':>9}{'compile s':>10}{'first s':>9}{'peak MB':>9}"
        f"{'GFLOP/s':>9}{'% mm':>7}{'x sens':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['name']:40}{cell(r['median_s'], 10, 4)}{cell(r['min_s'], 9, 4)}"
            f"{cell(r.get('compile_s'), 10, 1)}{cell(r.get('first_call_s'), 9, 3)}"
            f"{cell(r.get('peak_mb'), 9, 0)}{cell(r.get('gflops_per_s'), 9, 1)}"
            f"{cell(r.get('fraction_of_matmul'), 7, 1, 100.0)}{cell(r.get('ratio_to_sensitivity'), 8, 2)}"
        )
    lines.append("")
    for name, value in (ratios or {}).items():
        lines.append(f"{name}: {value:.2f}")
    for t in targets:
        verdict = "met" if t["met"] else "NOT met"
        lines.append(f"{t['target']}: {t['value']:.2f} (target {t['op']} {t['threshold']}): {verdict}")
    return "\n".join(lines)


# ---- measurement ---------------------------------------------------------------------------------


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc); elsewhere the peak so far from getrusage."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_free_heap() -> None:
    """Hands memory that malloc holds free back to the OS (glibc), so that RSS growth shows new allocations."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class RssPeak:
    """Context manager: the peak growth of process RSS over its body, sampled every millisecond.

    Both XLA's CPU runtime and torch allocate through malloc; the free heap is trimmed first, so the
    growth approximates the body's peak of live allocations (a lower bound where malloc reuses memory
    it could not trim).
    """

    def __enter__(self):
        release_free_heap()
        self.base = current_rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())
        self.delta_mb = (self.peak - self.base) / 2**20


def timed_median(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_rates(n: int, dtype_name: str, device) -> dict[str, float]:
    """Measured FLOP/s of an (n, n) @ (n, n) matmul in JAX (jitted) and in torch."""
    import torch

    jax_dtype = jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), jax_dtype)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, a))
    jax_s = timed_median(lambda: jax.block_until_ready(dot(a, a)), 7)
    torch_dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
    t = torch.randn(n, n, device=device, dtype=torch_dtype)

    def torch_mm():
        torch.mm(t, t)
        if device.type == "cuda":
            torch.cuda.synchronize()

    torch_mm()
    torch_s = timed_median(torch_mm, 7)
    return {
        "size": n,
        "dtype": dtype_name,
        "jax_flops_per_s": matmul_flops(n) / jax_s,
        "torch_flops_per_s": matmul_flops(n) / torch_s,
    }


# ---- rows ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One benchmarked computation: ``run(i)`` makes call ``i`` and waits until it has finished."""

    name: str
    run: Callable[[int], None]
    framework: str  # "jax" | "torch"
    extra: dict = dataclasses.field(default_factory=dict)  # compile_s, xla_flops, xla_temp_mb (JAX rows)
    times: list[float] = dataclasses.field(default_factory=list)
    first_call_s: float | None = None
    peak_mb: float | None = None


class JaxStep:
    """Calls a compiled train step, carrying its (donated) state from call to call."""

    def __init__(self, compiled, state, frozen, batch):
        self.compiled, self.state, self.frozen, self.batch = compiled, state, frozen, batch

    def __call__(self, i: int) -> None:
        self.state, metrics = self.compiled(self.state, self.frozen, self.batch, jax.random.key(i))
        jax.block_until_ready((self.state, metrics))


def compile_jax(fn, args: tuple) -> tuple[Callable, dict]:
    """AOT-compiles the jitted ``fn`` for ``args``: the executable, its compile time and XLA's estimates."""
    started = time.perf_counter()
    compiled = fn.lower(*args).compile()
    info = {"compile_s": time.perf_counter() - started}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    if cost and "flops" in cost:
        info["xla_flops"] = float(cost["flops"])
    memory = compiled.memory_analysis()
    if memory is not None:
        info["xla_temp_mb"] = memory.temp_size_in_bytes / 2**20
    return compiled, info


def make_batch(config: EncoderConfig, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(1000, config.vocab_size, (batch_size, seq_len)).astype(np.int32),
        "attention_mask": np.ones((batch_size, seq_len), np.int32),
        "token_type_ids": np.zeros((batch_size, seq_len), np.int32),
        "labels": rng.integers(0, 2, (batch_size,)).astype(np.int32),
        "example_mask": np.ones((batch_size,), np.int32),
        "example_index": np.arange(batch_size, dtype=np.int32),
    }


def adalora_config(args, **score) -> AdaLoRAConfig:
    return AdaLoRAConfig(r_init=args.r_init, r_target=args.r_target, alpha=16.0, orth_reg_weight=0.1, **score)


def our_rows(model, args, batch_np: dict) -> list[Row]:
    """Our steps per score and statistics mode, and the batch gradient and per-example moments alone."""
    functional = FunctionalModel(model, trainable_filter(HEAD_PATTERN))
    params, frozen = functional.params, functional.frozen
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    key = jax.random.key(0)
    rows = []
    for name, score in [(FIRST_BUILT_CONTROL, OUR_STEPS[SENSITIVITY]), *OUR_STEPS.items()]:
        adalora = adalora_config(args, **score)
        tx = adalora_optimizer(OptimConfig(), adalora, args.total_steps)
        # A copy per row: each step donates its state.
        state = jax.tree.map(jnp.copy, init_train_state(functional, tx, adalora))
        step = make_train_step(functional, tx, adalora, "classification", dropout=True)
        compiled, info = compile_jax(step, (state, frozen, batch, key))
        rows.append(Row(name, JaxStep(compiled, state, frozen, batch), "jax", info))
        print(f"compiled {name}: {info['compile_s']:.1f} s", flush=True)

    # Alone: the task loss only (no regulariser), as on the torch side, through the step's own entry point.
    def loss_and_statistics(statistics):
        def compute(params, batch, frozen, step_key):
            _, grads, m = value_grad_and_moments(
                task_losses_fn("classification", step_key, dropout=True),
                functional.model(params, frozen),
                batch,
                statistics=statistics,
                wrt=functional.trainable,
                mask=batch["example_mask"],
            )
            return (grads, m.sq_mean) if statistics == "per_example" else grads

        return compute

    loss_batch, moments = loss_and_statistics("batch"), loss_and_statistics("per_example")

    options = step_compiler_options()  # compiled as the training step is
    for name, fn in ((OURS_BATCH_ONLY, loss_batch), (OURS_PER_EXAMPLE_ONLY, moments)):
        compiled, info = compile_jax(jax.jit(fn, compiler_options=options), (params, batch, frozen, key))

        def run(i, compiled=compiled):
            jax.block_until_ready(compiled(params, batch, frozen, jax.random.key(i)))

        rows.append(Row(name, run, "jax", info))
        print(f"compiled {name}: {info['compile_s']:.1f} s", flush=True)
    return rows


def torch_rows(hf_dir: str, config: EncoderConfig, args, batch_np: dict, device) -> tuple[list[Row], dict]:
    """PEFT's AdaLoRA step, and the batch gradient and vmap(grad) moments alone, on transformers' model."""
    import torch
    from peft import AdaLoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32).to(device)
    inputs = {k: torch.from_numpy(batch_np[k]).long().to(device) for k in ("input_ids", "attention_mask")}
    if config.type_vocab_size > 0:
        inputs["token_type_ids"] = torch.from_numpy(batch_np["token_type_ids"]).long().to(device)
    labels = torch.from_numpy(batch_np["labels"]).long().to(device)
    model.eval()
    with torch.no_grad():
        reference_logits = model(**inputs).logits.float().cpu().numpy()

    peft_config = AdaLoraConfig(
        init_r=args.r_init,
        target_r=args.r_target,
        lora_alpha=16,
        lora_dropout=0.0,
        tinit=0,
        tfinal=0,
        deltaT=1,
        beta1=0.85,
        beta2=0.85,
        orth_reg_weight=0.1,
        total_step=args.total_steps,
        target_modules=HF_TARGETS[config.model_type],
        modules_to_save=["classifier", "pooler"],
    )
    model = get_peft_model(model, peft_config).train()
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    trainable = list(named.values())
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    counter = {"step": 0}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def peft_step(i):
        counter["step"] += 1
        with autocast:
            loss = model(**inputs, labels=labels).loss  # PEFT adds γ · orthogonal regularisation here
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        model.base_model.update_and_allocate(counter["step"])
        optimizer.zero_grad(set_to_none=True)
        sync()

    def batch_gradient(i):
        with autocast:
            logits = model(**inputs).logits
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        optimizer.zero_grad(set_to_none=True)
        sync()

    # Under vmap, a 2-D mask hits transformers' data-dependent "is there padding?" check (BERT). With no
    # padding the mask is dropped, as that check would drop it for the batch; otherwise BERT gets it
    # already broadcast (B, 1, 1, L). DeBERTa builds its own mask without such a check.
    per_example_inputs = dict(inputs)
    if config.model_type != "deberta-v2":
        mask = per_example_inputs.pop("attention_mask")
        if not bool(mask.all()):
            per_example_inputs["attention_mask"] = mask[:, None, None, :].bool()
    detached = {n: p.detach() for n, p in named.items()}

    def loss_one(params, example, label):
        one = {k: v[None] for k, v in example.items()}
        with autocast:
            logits = torch.func.functional_call(model, params, (), one).logits
        return torch.nn.functional.cross_entropy(logits.float(), label[None])

    grads_fn = torch.func.vmap(
        torch.func.grad(loss_one),
        in_dims=(None, 0, 0),
        randomness="different",
        chunk_size=args.vmap_chunk_size or None,  # None: all examples at once
    )

    def per_example(i):
        grads = grads_fn(detached, per_example_inputs, labels)
        _moments = {n: (g.mean(0), g.square().mean(0)) for n, g in grads.items()}  # E[g], E[g²] as ours
        sync()

    rows = [
        Row(PEFT_STEP, peft_step, "torch"),
        Row(TORCH_BATCH_ONLY, batch_gradient, "torch"),
        Row(TORCH_PER_EXAMPLE_ONLY, per_example, "torch"),
    ]
    return rows, {"reference_logits": reference_logits, "trainable_tensors": len(trainable)}


def jax_device_peak_mb() -> float | None:
    """The JAX device's peak of bytes in use over the whole process (every JAX row and its compilation), from
    ``Device.memory_stats()``; None where the backend keeps no statistics (CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def measure_peak(row: Row, i: int, device) -> float:
    """Peak memory growth (MB) during one call of ``row``."""
    import torch

    if device.type == "cuda" and row.framework == "torch":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        row.run(i)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if jax.default_backend() != "cpu" and row.framework == "jax":
        return row.extra.get("xla_temp_mb")  # JAX cannot reset its device peak
    with RssPeak() as peak:
        row.run(i)
    return peak.delta_mb


def time_interleaved(rows: list[Row], repeats: int, device) -> None:
    """Two untimed warm-up calls per row, then ``repeats`` rounds over all rows, then one memory call each."""
    for row in rows:
        started = time.perf_counter()
        row.run(0)
        row.first_call_s = time.perf_counter() - started
        row.run(1)
    for i in range(repeats):
        shift = i % len(rows)  # rotate the order, so that no row always follows the same one
        for row in rows[shift:] + rows[:shift]:
            started = time.perf_counter()
            row.run(2 + i)
            row.times.append(time.perf_counter() - started)
        print(f"repeat {i + 1}/{repeats} done", flush=True)
    for row in rows:
        row.peak_mb = measure_peak(row, 2 + repeats, device)


def result_rows(rows: list[Row], flops: dict[str, dict[str, int]], rates: dict[str, float]) -> list[dict]:
    """One JSON-ready dict per row: times, compile, memory, and achieved FLOP/s against the matmul rate.

    ``flops``: the analytic count per framework (``"jax"``, ``"torch"``), as each computes the step."""
    base = statistics.median(next(row.times for row in rows if row.name == SENSITIVITY))
    out = []
    for row in rows:
        summary = summarize(row.times)
        rate = rates["jax_flops_per_s"] if row.framework == "jax" else rates["torch_flops_per_s"]
        achieved = flops[row.framework]["total"] / summary["median_s"]
        out.append(
            {
                "name": row.name,
                "framework": row.framework,
                **summary,
                "times_s": row.times,
                "compile_s": row.extra.get("compile_s"),
                "first_call_s": row.first_call_s,
                "peak_mb": row.peak_mb,
                "gflops_per_s": achieved / 1e9,
                "fraction_of_matmul": achieved / rate,
                "ratio_to_sensitivity": summary["median_s"] / base,
                **{k: v for k, v in row.extra.items() if k != "compile_s"},
            }
        )
    return out


def machine_info(torch_device) -> dict:
    import peft
    import torch
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": os.getloadavg(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_device": str(torch_device),
        "gpu": torch.cuda.get_device_name() if torch_device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }


def add_output_arguments(parser) -> None:
    """``--out`` (the JSON file) and ``--malloc-tuning``, as every step benchmark takes them."""
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument(
        "--malloc-tuning",
        choices=["on", "off"],
        default="on",
        help="on: jax_adalora.cli.runtime.keep_freed_memory() as the training command does (applies to torch too)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="minilm")
    parser.add_argument("--layers", type=int, default=0, help="override the number of layers (0: the model's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="bfloat16: GPU runs")
    parser.add_argument("--r-init", type=int, default=16)
    parser.add_argument("--r-target", type=int, default=8)
    parser.add_argument("--total-steps", type=int, default=100_000, help="schedule length (masking every step)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--vmap-chunk-size",
        type=int,
        default=0,
        help="torch.func.vmap's chunk_size for the vmap(grad) row (0: the whole batch at once); bounds its memory, "
        "e.g. DeBERTa-v3-base at batch 32, whose unchunked row would not fit beside the others in 24 GB",
    )
    parser.add_argument("--matmul-size", type=int, default=0, help="0: 2048 on CPU, 8192 on GPU")
    add_output_arguments(parser)
    args = parser.parse_args()
    if args.vmap_chunk_size < 0:
        parser.error(
            f"--vmap-chunk-size must be 0 (no chunks) or a positive number of examples, got {args.vmap_chunk_size}"
        )
    malloc_tuned = args.malloc_tuning == "on" and keep_freed_memory()  # before JAX or torch allocate
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers only reads our temporary directory
    # On a GPU, JAX would otherwise take 75% of its memory up front and leave torch the rest.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    import torch

    torch.set_num_threads(os.cpu_count())  # explicit, so that both frameworks may use every core
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = jax.default_backend() != "cpu"
    machine = machine_info(device)
    machine["malloc_tuning"] = malloc_tuned
    print(json.dumps(machine), flush=True)

    overrides = {"num_hidden_layers": args.layers} if args.layers else {}
    config = MODELS[args.model](**overrides)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = SequenceClassifier(config, num_labels=2, dtype=dtype, rngs=nnx.Rngs(0))
    batch_np = make_batch(config, args.batch_size, args.seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = save_pretrained(model, os.path.join(tmp, "model"))  # before injection: base weights only
        rows_torch, torch_info = torch_rows(str(hf_dir), config, args, batch_np, device)
    inject_adapters(model, adalora_config(args), rngs=nnx.Rngs(1))
    # λ starts at 0, so the adapted model must still give the base model's logits.
    functional = FunctionalModel(model, trainable_filter(HEAD_PATTERN))
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    ours_logits = apply_model(functional, functional.params, functional.frozen, batch)
    logit_diff = float(np.max(np.abs(np.asarray(ours_logits, np.float32) - torch_info["reference_logits"])))
    print(f"same weights: max |logit difference| ours vs transformers = {logit_diff:.2e}", flush=True)
    rows = our_rows(model, args, batch_np) + rows_torch

    time_interleaved(rows, args.repeats, device)
    rates = matmul_rates(args.matmul_size or (8192 if on_gpu else 2048), args.dtype, device)
    flops = {
        "torch": step_flops(config, args.batch_size, args.seq_len, args.r_init),
        "jax": step_flops(
            config, args.batch_size, args.seq_len, args.r_init, last_layer_queries=1, skewed_positions=True
        ),
    }
    results = result_rows(rows, flops, rates)
    medians = {r["name"]: r["median_s"] for r in results}
    targets = evaluate_targets(medians, on_gpu=on_gpu)
    ratios = info_ratios(medians)
    machine["load_average_at_end"] = os.getloadavg()
    report = {
        "benchmark": "AdaLoRA training step: jax_adalora vs PEFT (PyTorch)",
        "machine": machine,
        "setup": {
            **vars(args),
            "model_config": {
                "model_type": config.model_type,
                "hidden_size": config.hidden_size,
                "num_hidden_layers": config.num_hidden_layers,
                "intermediate_size": config.intermediate_size,
                "vocab_size": config.vocab_size,
            },
            "weights": "random, ours saved with save_pretrained and loaded by transformers",
            "max_abs_logit_difference": logit_diff,
            "adapted_matrices": ADAPTED_PER_LAYER * config.num_hidden_layers,
            "head": HEAD_PATTERN,
            "schedule": "t_init=0, t_final=0, delta_t=1 (masking every step), gamma=0.1",
            "dropout": "on (model's rates) on both sides",
            "torch_trainable_tensors": torch_info["trainable_tensors"],
            "alone_rows": "task loss only (no regulariser), dropout on",
            "peak_mb_method": "CPU: RSS growth during one untimed call after malloc_trim (approximate); "
            "GPU: torch.cuda.max_memory_allocated delta, JAX: XLA temp buffers per row and the device's "
            "peak bytes in use over the process (jax_device_peak_mb)",
            "analytic_flops_per_step": flops,  # jax: the last layer at the first position alone
            "matmul_rate": rates,
        },
        "rows": results,
        "targets": targets,
        "ratios": ratios,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "jax_device_peak_mb": jax_device_peak_mb(),
        "contention_warning": contention_warning(machine["load_average_at_start"][0], os.cpu_count()),
    }
    if args.out:
        atomic_write_json(args.out, report)
        print(f"wrote {args.out}")
    print(
        f"\n{args.model} ({config.num_hidden_layers} layers), batch {args.batch_size} x {args.seq_len}, "
        f"{args.dtype}, {jax.default_backend()}, torch threads {machine['torch_threads']}, "
        f"matmul {rates['size']}: JAX {rates['jax_flops_per_s'] / 1e9:.1f} GFLOP/s, "
        f"torch {rates['torch_flops_per_s'] / 1e9:.1f} GFLOP/s; analytic step {flops['torch']['total'] / 1e9:.2f} "
        f"GFLOP as transformers computes it, {flops['jax']['total'] / 1e9:.2f} GFLOP as ours (last layer at the "
        "first position alone)"
    )
    print(format_table(results, targets, ratios))
    if report["contention_warning"]:
        print(report["contention_warning"])


if __name__ == "__main__":
    main()
