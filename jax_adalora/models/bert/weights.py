"""The Hugging Face key maps of BERT / RoBERTa checkpoints (``BertModel``, ``RobertaModel``)."""

from __future__ import annotations

from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.weight_map import WeightMap, linear_entries, norm_entries


def bert_weight_map(config: EncoderConfig) -> WeightMap:
    """Every weight of transformers' ``BertModel`` / ``RobertaModel`` except the pooler, as ``(hf_key, path, kind)``.

    ``hf_key`` is relative to the model prefix (``bert.`` / ``roberta.``); ``path`` is the attribute path
    of the variable in :class:`BertEncoder` (ints index ``layers``); ``kind`` is ``"linear"`` (torch
    (out, in) weight <-> nnx (in, out) kernel, transposed) or ``"copy"``. Used for loading and export.
    """
    emb = ("embeddings",)
    out: WeightMap = [
        ("embeddings.word_embeddings.weight", (*emb, "word_embeddings", "embedding"), "copy"),
        ("embeddings.position_embeddings.weight", (*emb, "position_embeddings", "embedding"), "copy"),
    ]
    if config.type_vocab_size > 0:
        out.append(("embeddings.token_type_embeddings.weight", (*emb, "token_type_embeddings", "embedding"), "copy"))
    out += norm_entries("embeddings.LayerNorm", (*emb, "norm"))
    for i in range(config.num_hidden_layers):
        hf, path = f"encoder.layer.{i}", ("layers", i)
        attn = (*path, "attention")
        out += linear_entries(f"{hf}.attention.self.query", (*attn, "query"))
        out += linear_entries(f"{hf}.attention.self.key", (*attn, "key"))
        out += linear_entries(f"{hf}.attention.self.value", (*attn, "value"))
        out += linear_entries(f"{hf}.attention.output.dense", (*attn, "output"))
        out += norm_entries(f"{hf}.attention.output.LayerNorm", (*attn, "output_norm"))
        out += linear_entries(f"{hf}.intermediate.dense", (*path, "intermediate"))
        out += linear_entries(f"{hf}.output.dense", (*path, "output"))
        out += norm_entries(f"{hf}.output.LayerNorm", (*path, "output_norm"))
    return out


def bert_pooler_weight_map(config: EncoderConfig) -> WeightMap:
    """The pooler's weights: ``pooler.dense.*`` relative to the model prefix, paths relative to :class:`BertPooler`."""
    del config  # the pooler's keys do not depend on it
    return linear_entries("pooler.dense", ("dense",))
