"""The offline default: pretrained MiniLM-L6 on real movie-review sentences.

    python -m jax_adalora.train --score gsnr                              # = the ``sentiment`` profile
    python -m jax_adalora.train --config configs/movie.py:sentiment --score gsnr
    python -m jax_adalora.train --config configs/movie.py:rating --score fisher
    python -m jax_adalora.train --config configs/movie.py:paper --score gsnr   # 3 epochs, as the paper

Data: the 10,605 Rotten-Tomatoes sentences of ``vadersentiment==3.3.2`` (fetched once from PyPI into
the cache), a fixed 90/10 split by sentence id. ``sentiment`` is the built-in default (2 epochs, 594
steps, about 13 minutes on 2 CPU cores); expected dev accuracy: see README.md ("Measured results").
"""

from jax_adalora.run_config import DEFAULT_RUN

PROFILES = {
    "sentiment": dict(DEFAULT_RUN),
    "rating": dict(DEFAULT_RUN, task="movie-rating"),
    # The seed paper's length (3 epochs), schedule scaled to 891 steps.
    "paper": dict(DEFAULT_RUN, epochs=3, t_init=90, t_final=180),
}


def get_config(profile=None):
    return dict(PROFILES[profile or "sentiment"])
