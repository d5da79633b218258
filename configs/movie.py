"""The offline default: pretrained MiniLM-L6 on real movie-review sentences.

Run (``sentiment`` is also what ``python -m jax_adalora.train`` does with no flags):

    python -m jax_adalora.train --config configs/movie.py:sentiment --score gsnr
    python -m jax_adalora.train --config configs/movie.py:rating --score fisher

Data: the 10,605 Rotten-Tomatoes sentences of ``vadersentiment==3.3.2`` (fetched once from PyPI into
the cache), a fixed seeded 90/10 split. Expected results: see docs/RESULTS.md and README.md.
"""

COMMON = dict(
    model="minilm-l6",
    epochs=3,
    batch_size=32,
    max_seq_length=128,
    r_init=16,
    r_target=8,
    alpha=16.0,
    targets="paper",
    learning_rate=1e-3,
    warmup_ratio=0.06,
    weight_decay=0.01,
    orth_reg_weight=0.1,
    t_init=100,
    t_final=200,
    delta_t=10,
)

PROFILES = {
    "sentiment": dict(COMMON, task="movie-sentiment"),
    "rating": dict(COMMON, task="movie-rating"),
}


def get_config(profile=None):
    return dict(PROFILES[profile or "sentiment"])
