"""The Hugging Face key map of DeBERTa-v2/v3 checkpoints (``DebertaV2Model``)."""

from __future__ import annotations

from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.deberta.modeling import relative_embedding_norms
from jax_adalora.models.weight_map import WeightMap, linear_entries, norm_entries


def deberta_weight_map(config: EncoderConfig) -> WeightMap:
    """Every weight of transformers' ``DebertaV2Model`` as ``(hf_key, path, kind)``.

    ``hf_key`` is relative to the ``deberta.`` prefix; ``path`` is the attribute path of the
    variable in ``DebertaV2Encoder`` (ints index ``layers``); ``kind`` is ``"linear"`` (torch
    (out, in) weight, transposed to the nnx (in, out) kernel) or ``"copy"``.
    """
    out: WeightMap = [("embeddings.word_embeddings.weight", ("embeddings", "word_embeddings", "embedding"), "copy")]
    if config.position_biased_input:
        out.append(
            ("embeddings.position_embeddings.weight", ("embeddings", "position_embeddings", "embedding"), "copy")
        )
    if config.type_vocab_size > 0:
        out.append(
            ("embeddings.token_type_embeddings.weight", ("embeddings", "token_type_embeddings", "embedding"), "copy")
        )
    if (config.embedding_size or config.hidden_size) != config.hidden_size:
        out.append(("embeddings.embed_proj.weight", ("embeddings", "embed_proj", "kernel"), "linear"))  # no bias
    out += norm_entries("embeddings.LayerNorm", ("embeddings", "norm"))
    separate = config.relative_attention and not config.share_att_key
    for i in range(config.num_hidden_layers):
        hf, path = f"encoder.layer.{i}", ("layers", i)
        attn_hf, attn = f"{hf}.attention", (*path, "attention")
        out += linear_entries(f"{attn_hf}.self.query_proj", (*attn, "query"))
        out += linear_entries(f"{attn_hf}.self.key_proj", (*attn, "key"))
        out += linear_entries(f"{attn_hf}.self.value_proj", (*attn, "value"))
        if separate and "c2p" in config.pos_att_type:
            out += linear_entries(f"{attn_hf}.self.pos_key_proj", (*attn, "pos_key"))
        if separate and "p2c" in config.pos_att_type:
            out += linear_entries(f"{attn_hf}.self.pos_query_proj", (*attn, "pos_query"))
        out += linear_entries(f"{attn_hf}.output.dense", (*attn, "output"))
        out += norm_entries(f"{attn_hf}.output.LayerNorm", (*attn, "output_norm"))
        out += linear_entries(f"{hf}.intermediate.dense", (*path, "intermediate"))
        out += linear_entries(f"{hf}.output.dense", (*path, "output"))
        out += norm_entries(f"{hf}.output.LayerNorm", (*path, "output_norm"))
    if config.relative_attention:
        out.append(("encoder.rel_embeddings.weight", ("rel_embeddings", "embedding"), "copy"))
    if "layer_norm" in relative_embedding_norms(config):
        out += norm_entries("encoder.LayerNorm", ("rel_norm",))
    return out


def deberta_pooler_weight_map(config: EncoderConfig) -> WeightMap:
    """The pooler's weights: top-level ``pooler.dense.*`` keys, paths relative to ``DebertaContextPooler``."""
    del config  # the pooler's keys do not depend on it
    return linear_entries("pooler.dense", ("dense",))
