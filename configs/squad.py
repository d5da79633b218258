"""SQuAD v1.1 and v2.0 with DeBERTa-v3-base, the paper's settings (r_init 16 -> 8, 3 epochs).

    python -m jax_adalora.train --config configs/squad.py:v1 --score gsnr \
        --model /path/to/deberta-v3-base --train-file train-v1.1.json --validation-file dev-v1.1.json
    python -m jax_adalora.train --config configs/squad.py:v2 --score fisher --model microsoft/deberta-v3-base

Compute dtype: bfloat16 for activations (parameters, logits, the loss and the regulariser stay float32), the
profiles being meant for a GPU or TPU (docs/GPU_TPU.md). On CPU add ``--dtype float32`` (flags override the
profile).

Results to expect (the paper, GSNR): v1.1 EM/F1 88.48/94.23, v2.0 86.09/88.97 (Kim et al., Table 2).
Not reproduced here (no GPU, no hub access in CI).
"""

COMMON = dict(
    model="microsoft/deberta-v3-base",
    epochs=3,
    batch_size=16,
    max_seq_length=384,
    doc_stride=128,
    r_init=16,
    r_target=8,
    alpha=16.0,
    targets="paper",
    learning_rate=1e-3,
    orth_reg_weight=0.1,
    t_init=5000,
    t_final=5000,
    delta_t=100,
    warmup_ratio=0.06,
    dtype="bfloat16",
)

PROFILES = {"v1": dict(COMMON, task="squad"), "v2": dict(COMMON, task="squad_v2")}


def get_config(profile=None):
    return dict(PROFILES[profile or "v1"])
