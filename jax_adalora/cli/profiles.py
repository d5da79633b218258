"""The built-in run: what ``python -m jax_adalora.train`` trains with no ``--config``.

The dataclasses' own defaults (``AdaLoRAConfig``, ``OptimConfig``, ``TrainConfig``) are the library's, for a
model of the user's own; this profile overrides them for the offline default: the pretrained MiniLM-L6 on
``movie-sentiment``, one epoch at batch 32 with sentences cut at 48 tokens, sized to finish within 15 minutes on a
2-core CPU. The schedule is in fractions of the run (10 % warm-up, 20 % final phase), so any dataset size keeps a
budgeting phase. Adapter scale α 32, no orthogonal regulariser and learning rate 2e-3, with the pooler and
classifier trained, are the choices of the defaults study (docs/DEFAULTS_STUDY.md); the figures they give are on
the results page (docs/results.md). ``configs/movie.py`` builds its profiles on this one.
"""

from __future__ import annotations

from typing import Any

DEFAULT_RUN: dict[str, Any] = dict(
    task="movie-sentiment",
    model="minilm-l6",
    epochs=1,
    batch_size=32,
    max_seq_length=48,
    r_init=16,
    r_target=8,
    alpha=32.0,
    targets="paper",
    learning_rate=2e-3,
    warmup_ratio=0.06,
    weight_decay=0.01,
    orth_reg_weight=0.0,
    t_init=0.1,
    t_final=0.2,
    delta_t=5,
)
