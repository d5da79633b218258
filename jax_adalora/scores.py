"""Element importance scores, their smoothing, and triplet importance.

Element scores map ``(params, moments)`` to a pytree shaped like ``params``:

====================  ================================  =========================================
name                  s(w)                              reads
====================  ================================  =========================================
``sensitivity``       ``|w · E[g]|``                    batch gradient (AdaLoRA's original)
``movement``          ``-w · E[g]``                     batch gradient (Sanh et al., 2020)
``fisher``            ``E[g²]``                         second moment over examples
``gsnr``              ``E[g]² / (Var[g] + eps)``        mean and variance over examples
``magnitude``         ``|w|``                           the weights only (the official code's "mag")
``saliency``          ``½ · w² · E[g²]``                second moment (Optimal Brain Damage, Fisher)
``gsnr_magnitude``    ``|w| · E[g]² / (Var[g] + eps)``  mean and variance over examples (ours)
====================  ================================  =========================================

Each is a :class:`Score` that says what it reads. A score of your own, ``s(params, moments) -> element
scores``, joins these by name with :func:`register_score` (or is passed as a :class:`Score`);
``AdaLoRAConfig(score=name)`` and the training command's ``--score name`` (with ``--score-module`` naming the
module that registers it) then select it.

Smoothing turns raw element scores into the scores the allocator ranks, one state per run:

* ``adalora``: ``ema = β1 ema + (1-β1) s``; ``unc = β2 unc + (1-β2) |s - ema|`` (with the updated
  ema); score ``ema · unc``. EMAs start at 0 without bias correction, exactly as AdaLoRA / PEFT.
* ``ema``: ``ema = β1 ema + (1-β1) s``; score ``ema``.
* ``none``: score ``s``.
* ``sum``: ``sum = sum + s``; score ``sum``: the cumulative score since the start, as movement pruning (Sanh,
  Wolf and Rush, 2020) accumulates ``-w · g`` over training instead of averaging it.
* ``pooled``: the gradient moments themselves are pooled over every example of every step since the last
  re-allocation (``E[g]`` and ``Var[g]`` over ΔT × B examples, combined exactly as Chan, Golub and LeVeque's
  parallel variance), and the score is computed from them, not smoothed: a GSNR or Fisher from all the examples
  the re-allocation can see instead of one batch (ours). The pool restarts after each re-allocation; the last
  re-allocation (the freeze step) pools its own step's batch too, so it never ranks an empty pool.

Triplet importance (AdaLoRA's eq.): ``S_i = s(λ_i) + mean_j s(P_{j,i}) + mean_j s(Q_{i,j})``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jax_adalora.stats import Moments

PyTree = Any
ElementScore = Callable[[PyTree, Moments], PyTree]

DEFAULT_GSNR_EPS = 1e-12


def sensitivity(params: PyTree, moments: Moments) -> PyTree:
    """``|w · g|`` with ``g = moments.mean`` (AdaLoRA's sensitivity)."""
    return jax.tree.map(lambda w, g: jnp.abs(w * g), params, moments.mean)


def movement(params: PyTree, moments: Moments) -> PyTree:
    """``-w · g`` with ``g = moments.mean`` (movement pruning's first-order score)."""
    return jax.tree.map(lambda w, g: -w * g, params, moments.mean)


def fisher(params: PyTree, moments: Moments) -> PyTree:
    """Empirical Fisher diagonal ``E[g²]``."""
    del params
    return moments.sq_mean


def gsnr(params: PyTree, moments: Moments, eps: float = DEFAULT_GSNR_EPS) -> PyTree:
    """Gradient signal-to-noise ratio ``E[g]² / (Var[g] + eps)``.

    ``eps`` (default 1e-12) keeps the score finite where the variance is 0 (e.g. a batch of one, or
    elements with identical per-example gradients); there the score is ``E[g]² / eps``.
    """
    del params
    return jax.tree.map(lambda m, v: (m * m) / (v + eps), moments.mean, moments.var)


def magnitude(params: PyTree, moments: Moments) -> PyTree:
    """``|w|``: importance without gradients, the ``"mag"`` option of the official AdaLoRA code (Zhang et al.,
    2023), where it is ranked unsmoothed: pair it with ``smoothing="none"`` to reproduce that."""
    del moments
    return jax.tree.map(jnp.abs, params)


def saliency(params: PyTree, moments: Moments) -> PyTree:
    """``½ · w² · E[g²]``: the second-order saliency of Optimal Brain Damage (LeCun, Denker and Solla, 1990),
    the loss increase from zeroing ``w`` at a minimum, with the Hessian's diagonal approximated by the
    empirical Fisher ``E[g²]`` over examples, as in Fisher pruning (Theis et al., 2018). Where sensitivity
    ``|w · E[g]|`` is the first-order estimate of that loss change, this is the second-order one, which does
    not vanish when the batch's gradients cancel."""
    return jax.tree.map(lambda w, g2: 0.5 * w * w * g2, params, moments.sq_mean)


def gsnr_magnitude(params: PyTree, moments: Moments, eps: float = DEFAULT_GSNR_EPS) -> PyTree:
    """``|w| · E[g]² / (Var[g] + eps)``: GSNR weighted by the weight's size (ours). GSNR alone says how consistent
    an element's gradient is, not how much the element carries: a triplet whose λ and vectors have learned a
    large update can score as low as one that is still near zero. Every weight-aware score (sensitivity,
    magnitude, saliency) keeps such triplets; this one keeps GSNR's consistency and adds the weight."""
    return jax.tree.map(lambda w, m, v: jnp.abs(w) * (m * m) / (v + eps), params, moments.mean, moments.var)


READS = ("gradient", "moments")


@dataclasses.dataclass(frozen=True)
class Score:
    """An element score and what it reads, callable as ``score(params, moments)``.

    ``reads`` is ``"gradient"`` (the weights and the batch gradient ``moments.mean``, which every statistics mode
    gives exactly) or ``"moments"`` (also ``E[g²]`` / ``Var[g]``, from per-example gradients or running
    estimates). :func:`jax_adalora.moments.value_grad_and_moments` (``score=``) computes what it reads, and
    :func:`jax_adalora.allocator.rank_allocator` refuses moments that lack it.
    """

    name: str
    function: ElementScore
    reads: str

    def __post_init__(self):
        if not (isinstance(self.name, str) and self.name.strip()) or not callable(self.function):
            raise ValueError(f"Score: expected a non-empty name and a callable, got {self.name!r}, {self.function!r}")
        if self.reads not in READS:
            raise ValueError(f"Score {self.name!r}: reads={self.reads!r}, expected one of {READS}")

    @property
    def reads_moments(self) -> bool:
        """Whether it reads ``E[g²]`` or ``Var[g]`` (so the step must compute them)."""
        return self.reads == "moments"

    def __call__(self, params: PyTree, moments: Moments) -> PyTree:
        return self.function(params, moments)


_REGISTRY: dict[str, Score] = {}


def register_score(name: str, function: ElementScore, *, reads: str) -> Score:
    """Makes ``function`` an element score called ``name``, for ``AdaLoRAConfig(score=name)``; returns it.

    ``function(params, moments)`` gets the adapter triplets (``{path: {"P", "lam", "Q"}}``) and their
    :class:`jax_adalora.stats.Moments`, and returns a tree of the same shapes (higher = more important); it
    runs inside the jitted step. ``reads`` is ``"gradient"`` when it uses only ``params`` and ``moments.mean``
    (the training step then skips the per-example statistics) or ``"moments"`` when it uses ``sq_mean`` or
    ``var`` too. A :class:`Score` made directly works as well, without a name in the registry.

    >>> register_score("abs_gradient", lambda params, moments: jax.tree.map(jnp.abs, moments.mean), reads="gradient")
    Score(name='abs_gradient', ...)

    Raises:
      ValueError: ``name`` is empty or already names another function, or ``reads`` is not one of
        :data:`READS`.
    """
    score = Score(name, function, reads)
    known = _REGISTRY.get(name)
    if known is not None and (known.function is not function or known.reads != reads):
        raise ValueError(f"register_score: the score {name!r} is already registered to another function")
    _REGISTRY[name] = score
    return score


for _name, _function, _reads in (
    ("sensitivity", sensitivity, "gradient"),
    ("movement", movement, "gradient"),
    ("fisher", fisher, "moments"),
    ("gsnr", gsnr, "moments"),
    ("magnitude", magnitude, "gradient"),
    ("saliency", saliency, "moments"),
    ("gsnr_magnitude", gsnr_magnitude, "moments"),
):
    register_score(_name, _function, reads=_reads)


def score_names() -> tuple[str, ...]:
    """Every registered score: the built-in ones, then those added with :func:`register_score`."""
    return tuple(_REGISTRY)


def get(score: str | Score, *, gsnr_eps: float = DEFAULT_GSNR_EPS) -> Score:
    """The :class:`Score` called ``score`` (``gsnr`` with the given ``eps``), or ``score`` itself if it is one.

    Raises:
      ValueError: no score has that name.
    """
    if isinstance(score, Score):
        return score
    try:
        found = _REGISTRY[score]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown score {score!r}: expected one of {score_names()}, a name given to register_score, or a Score"
        ) from None
    if found.function in (gsnr, gsnr_magnitude):
        return dataclasses.replace(found, function=functools.partial(found.function, eps=gsnr_eps))
    return found


def reads_moments(score: str | Score) -> bool:
    """Whether the score (a name or a :class:`Score`) reads ``E[g²]`` or ``Var[g]``."""
    return get(score).reads_moments


def statistics_for(score: str | Score, statistics: str) -> str:
    """The statistics mode that computes what ``score`` reads: ``"batch"`` (the batch gradient alone) for a score
    that reads only the gradient, else ``statistics`` (``"per_example"`` or ``"running"``)."""
    return statistics if reads_moments(score) else "batch"


# ---- smoothing -----------------------------------------------------------------------------------


class SmoothingState(NamedTuple):
    ema: PyTree  # smoothed element score
    unc: PyTree  # smoothed |score - ema| (used by "adalora" only; kept zero otherwise)


def smoothing_init(params: PyTree) -> SmoothingState:
    def zeros():  # distinct buffers, so that a donated state holds no buffer twice
        return jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params)

    return SmoothingState(ema=zeros(), unc=zeros())


def smooth(
    kind: str, state: SmoothingState, element_scores: PyTree, *, beta1: float = 0.85, beta2: float = 0.85
) -> SmoothingState:
    """One smoothing update; read the result with :func:`smoothed_score`."""
    if kind == "none":
        return SmoothingState(ema=element_scores, unc=state.unc)
    if kind == "sum":
        return SmoothingState(ema=jax.tree.map(jnp.add, state.ema, element_scores), unc=state.unc)
    ema = jax.tree.map(lambda e, s: beta1 * e + (1 - beta1) * s, state.ema, element_scores)
    if kind == "ema":
        return SmoothingState(ema=ema, unc=state.unc)
    if kind == "adalora":
        unc = jax.tree.map(lambda u, s, e: beta2 * u + (1 - beta2) * jnp.abs(s - e), state.unc, element_scores, ema)
        return SmoothingState(ema=ema, unc=unc)
    raise ValueError(f"unknown smoothing {kind!r}: expected one of ('adalora', 'ema', 'none', 'sum')")


def smoothed_score(kind: str, state: SmoothingState) -> PyTree:
    """The element score the allocator ranks: ``ema · unc`` for "adalora", else ``ema``."""
    if kind == "adalora":
        return jax.tree.map(jnp.multiply, state.ema, state.unc)
    return state.ema


# ---- moments pooled since the last re-allocation ("pooled") -------------------------------------


class PooledMoments(NamedTuple):
    """The gradient moments of every example since the pool last restarted: ``count`` examples, their ``mean``
    gradient and ``m2``, the sum of squared deviations from it (``Var[g] = m2 / count``), triplet-shaped. With a
    score that reads only the gradient, ``m2`` stays zero."""

    count: jax.Array  # shape=(), float32: examples pooled
    mean: PyTree
    m2: PyTree


def pooled_init(triplets: PyTree) -> PooledMoments:
    def zeros():
        return jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), triplets)

    return PooledMoments(count=jnp.zeros((), jnp.float32), mean=zeros(), m2=zeros())


def pool(state: PooledMoments, moments: Moments) -> PooledMoments:
    """``state`` with one more batch's moments (``moments.count`` examples) added: Chan, Golub and LeVeque's
    pairwise update, ``δ = mean_b - mean_a``, ``mean = mean_a + δ n_b / n``, ``m2 = m2_a + n_b var_b +
    δ² n_a n_b / n``, exact and without the cancellation of ``E[g²] - E[g]²``."""
    n_a, n_b = state.count, jnp.asarray(moments.count, jnp.float32)
    n = jnp.maximum(n_a + n_b, 1.0)
    delta = jax.tree.map(lambda m_b, m_a: m_b - m_a, moments.mean, state.mean)
    mean = jax.tree.map(lambda m_a, d: m_a + d * (n_b / n), state.mean, delta)
    if moments.var is None:
        m2 = state.m2
    else:
        m2 = jax.tree.map(lambda q, v, d: q + n_b * v + d * d * (n_a * n_b / n), state.m2, moments.var, delta)
    return PooledMoments(count=n_a + n_b, mean=mean, m2=m2)


def pooled_moments(state: PooledMoments, *, with_second: bool) -> Moments:
    """The pool as :class:`Moments` (population variance over its examples), for a score to read."""
    if not with_second:
        return Moments(mean=state.mean, sq_mean=None, var=None, count=state.count)
    n = jnp.maximum(state.count, 1.0)
    var = jax.tree.map(lambda q: q / n, state.m2)
    sq_mean = jax.tree.map(lambda m, v: m * m + v, state.mean, var)
    return Moments(mean=state.mean, sq_mean=sq_mean, var=var, count=state.count)


# ---- triplets ------------------------------------------------------------------------------------


def triplet_importance(element_scores: PyTree) -> dict[str, jax.Array]:
    """``{module_path: (*stack, r)}``: ``s(λ) + mean over d_out of s(P) + mean over d_in of s(Q)``.

    Args:
      element_scores: a triplet-shaped pytree ``{path: {"P": (*stack, d_out, r), "lam": (*stack, r), "Q":
        (*stack, r, d_in)}}``; the leading layer axes of a stacked adapter (none otherwise) are batch axes.
    """
    return {
        path: s["lam"] + jnp.mean(s["P"], axis=-2) + jnp.mean(s["Q"], axis=-1) for path, s in element_scores.items()
    }
