"""GLUE with DeBERTa-v3-base: the paper's settings and the official AdaLoRA scripts' settings.

Profiles ``<task>`` follow the seed paper (r_init 16 -> r_target 8, 3 epochs; its learning rates are
not published, so each task starts from the official script's rate), ``official-<task>`` follow the
official AdaLoRA GLUE scripts (as the score-function study, Kim et al., describes them).
Tasks: mnli sst2 cola qqp qnli rte mrpc stsb.

    python -m jax_adalora.train --config configs/glue.py:mrpc --score gsnr \
        --model /path/to/deberta-v3-base --data-dir /path/to/glue/MRPC
    python -m jax_adalora.train --config configs/glue.py:official-rte --score sensitivity \
        --model microsoft/deberta-v3-base          # online: model and data from the hub

Compute dtype: bfloat16 for activations (parameters, logits, the loss and the regulariser stay float32), the
profiles being meant for a GPU or TPU (docs/GPU_TPU.md). On CPU, where bf16 matmuls are slower than float32 and
results were measured in float32, add ``--dtype float32`` (flags override the profile).

Results to expect (the paper, DeBERTa-v3-base, GSNR): MRPC 88.73, SST-2 94.38, CoLA 67.28, QQP 91.60,
QNLI 93.76, RTE 85.56, MNLI 90.36/90.50, STS-B 90.35 (Kim et al., Table 1).
Not reproduced here: no GPU and no hub access in our CI; see docs/results.md for what was run.
"""

# Official AdaLoRA GLUE scripts (NLU/scripts/run_debertav3_<task>.sh in github.com/QingruZhang/AdaLoRA):
# lr, epochs, t_init, t_final, delta_t, orth_reg_weight, r_init, r_target, lora_alpha, max_seq_length.
OFFICIAL = {
    "mnli": (5e-4, 7, 8000, 50000, 100, 0.1, 3, 1, 16.0, 256),
    "sst2": (8e-4, 24, 6000, 22000, 100, 0.1, 2, 1, 16.0, 128),
    "cola": (8e-4, 25, 800, 3500, 10, 0.1, 3, 1, 32.0, 64),
    "qqp": (8e-4, 5, 8000, 25000, 100, 0.1, 2, 1, 16.0, 320),
    "qnli": (5e-4, 5, 2000, 8000, 100, 0.1, 2, 1, 32.0, 512),
    "rte": (1.2e-3, 50, 600, 1800, 1, 0.3, 2, 1, 32.0, 320),
    "mrpc": (1e-3, 30, 600, 1800, 1, 0.1, 2, 1, 32.0, 320),
    "stsb": (2.2e-3, 25, 800, 2000, 10, 0.3, 2, 1, 32.0, 128),
}

COMMON = dict(
    model="microsoft/deberta-v3-base",
    batch_size=32,
    max_seq_length=128,
    alpha=16.0,
    targets="paper",
    beta1=0.85,
    beta2=0.85,
    warmup_ratio=0.06,
    weight_decay=0.01,
    dtype="bfloat16",
)


def get_config(profile=None):
    if not profile:
        raise KeyError("a GLUE task: e.g. configs/glue.py:mrpc or configs/glue.py:official-mrpc")
    official = profile.startswith("official-")
    task = profile.removeprefix("official-")
    lr, epochs, t_init, t_final, delta_t, gamma, r_init, r_target, alpha, max_len = OFFICIAL[task]
    config = dict(COMMON, task=task, learning_rate=lr, orth_reg_weight=gamma, delta_t=delta_t)
    if official:
        config.update(epochs=epochs, t_init=t_init, t_final=t_final, r_init=r_init, r_target=r_target)
        config.update(alpha=alpha, max_seq_length=max_len)
    else:
        # The paper: 3 epochs, 16 -> 8. Its t_init/t_final are not published: 200 / 1000 steps suit the
        # small tasks (RTE, MRPC, STS-B, CoLA) at batch 32; raise them for MNLI and QQP.
        config.update(epochs=3, r_init=16, r_target=8, t_init=200, t_final=1000)
    return config
