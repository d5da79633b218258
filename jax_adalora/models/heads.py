"""Task heads around the BERT / RoBERTa / DeBERTa-v2 encoders, laid out as transformers' task models.

Every model keeps its encoder at attribute ``encoder`` (so adapter paths read
``encoder.layers.3.attention.query``), remembers its ``config`` and ``head_kind``, and knows its own
Hugging Face key map (:meth:`hf_weight_map`), used both to load and to export.

* :class:`SequenceClassifier` -> logits (B, num_labels); ``num_labels == 1`` is regression.
  BERT: pooler -> dropout -> ``classifier``; RoBERTa: ``classifier`` (dropout, dense, tanh, dropout,
  out_proj) on the first token; DeBERTa: context ``pooler`` -> dropout -> ``classifier``. Every one reads the
  first token alone, so the encoder's last layer computes that position only (``first_token_only``).
* :class:`QuestionAnswerer` -> (start_logits, end_logits), each (B, L): ``qa_outputs`` Linear(H, 2).
* :class:`EncoderModel` -> last hidden state (B, L, H) (``BertModel`` / ``DebertaV2Model``).

Head parameters sit at the top level (``pooler``, ``classifier``, ``qa_outputs``), outside ``encoder``.
The final projection runs in float32 whatever the compute dtype, so logits are always float32; it asks for
``Precision.HIGHEST``, since JAX's default float32 matmul is one bf16 pass on TPU and TF32 on recent GPUs
(CPU computes float32 matmuls in float32 either way, so its logits are unchanged).

Example::

    model = SequenceClassifier(EncoderConfig.minilm_l6(), num_labels=2, rngs=nnx.Rngs(0))
    logits = model(input_ids, attention_mask, token_type_ids, dropout_keys=keys)  # (B, 2)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_adalora.models.bert.modeling import BertEncoder, BertPooler
from jax_adalora.models.bert.weights import bert_pooler_weight_map, bert_weight_map
from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.dropout import dropout
from jax_adalora.models.targets import TARGET_PRESETS
from jax_adalora.models.weight_map import WeightMap, linear_entries

HEAD_KINDS = ("classification", "qa", None)

# Dropout site ids of the heads: above every encoder id and DeBERTa's pooler id (100_000).
CLASSIFIER_DROPOUT_SITE = 200_000
CLASSIFIER_INNER_DROPOUT_SITE = 200_001  # RoBERTa's head drops out twice

# HF prefix of the base model inside task models, and the architecture names per head.
MODEL_PREFIXES = {"bert": "bert", "roberta": "roberta", "deberta-v2": "deberta"}
_ARCH_STEMS = {"bert": "Bert", "roberta": "Roberta", "deberta-v2": "DebertaV2"}
_ARCH_SUFFIXES = {None: "Model", "classification": "ForSequenceClassification", "qa": "ForQuestionAnswering"}


def hf_architecture(model_type: str, head_kind: str | None) -> str:
    """transformers' class name, e.g. ``("bert", "classification") -> "BertForSequenceClassification"``."""
    return _ARCH_STEMS[model_type] + _ARCH_SUFFIXES[head_kind]


def build_encoder(config: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Module:
    """The encoder for ``config.model_type``: :class:`BertEncoder` or ``DebertaV2Encoder``."""
    if config.model_type in ("bert", "roberta"):
        return BertEncoder(config, dtype=dtype, rngs=rngs)
    if config.model_type == "deberta-v2":
        from jax_adalora.models.deberta.modeling import DebertaV2Encoder

        return DebertaV2Encoder(config, dtype=dtype, rngs=rngs)
    raise ValueError(f"EncoderConfig.model_type={config.model_type!r} has no encoder")


def encoder_weight_map(config: EncoderConfig) -> WeightMap:
    """The encoder's key map: keys relative to the model prefix, paths relative to the encoder."""
    if config.model_type == "deberta-v2":
        from jax_adalora.models.deberta.weights import deberta_weight_map

        return deberta_weight_map(config)
    return bert_weight_map(config)


def _prefixed(entries: WeightMap, key_prefix: str, path_prefix: tuple) -> WeightMap:
    return [(key_prefix + key, (*path_prefix, *path), kind) for key, path, kind in entries]


def _final_linear(d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        d_in,
        d_out,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=jax.lax.Precision.HIGHEST,
        kernel_init=nnx.initializers.normal(stddev=0.02),
        rngs=rngs,
    )


def _classifier_dropout_rate(config: EncoderConfig) -> float:
    if config.model_type == "deberta-v2":
        rate = dict(config.extra_hf_fields).get("cls_dropout")
    else:
        rate = config.classifier_dropout
    return config.hidden_dropout_prob if rate is None else float(rate)


class _HFModel(nnx.Module):
    """Shared by the task models: the encoder, the metadata, and the encoder part of the key map."""

    head_kind: str | None = None
    # Named adapter targets, read by jax_adalora.adapters.inject_adapters (the adapter protocol's other half).
    target_presets = TARGET_PRESETS

    def _init_encoder(self, config: EncoderConfig, dtype, rngs: nnx.Rngs) -> None:
        self.config = config
        self.encoder = build_encoder(config, dtype=dtype, rngs=rngs)

    @property
    def hf_architecture(self) -> str:
        return hf_architecture(self.config.model_type, self.head_kind)

    @property
    def hf_prefix(self) -> str:
        """Prefix of the base model's keys in this architecture's state dict (``""`` for the bare model)."""
        return "" if self.head_kind is None else MODEL_PREFIXES[self.config.model_type] + "."

    def hf_weight_map(self) -> WeightMap:
        """``(hf_key, path from the model root, kind)`` for every weight, keys as transformers names them."""
        return _prefixed(encoder_weight_map(self.config), self.hf_prefix, ("encoder",)) + self._head_weight_map()

    def _head_weight_map(self) -> WeightMap:
        return []


class EncoderModel(_HFModel):
    """The bare encoder (``BertModel`` / ``RobertaModel`` / ``DebertaV2Model``): returns (B, L, H).

    BERT and RoBERTa keep the pooler that their ``*Model`` carries, so that export writes it back;
    the forward does not use it.
    """

    head_kind = None

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self._init_encoder(config, dtype, rngs)
        self.num_labels = 0
        self.pooler = BertPooler(config, dtype=dtype, rngs=rngs) if config.model_type != "deberta-v2" else None

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_keys=None) -> jax.Array:
        return self.encoder(input_ids, attention_mask, token_type_ids, dropout_keys=dropout_keys)

    def _head_weight_map(self) -> WeightMap:
        if self.pooler is None:
            return []
        return _prefixed(bert_pooler_weight_map(self.config), "", ("pooler",))


class RobertaClassificationHead(nnx.Module):
    """First token -> dropout -> dense -> tanh -> dropout -> out_proj, as transformers' RoBERTa head."""

    def __init__(self, config: EncoderConfig, *, num_labels: int, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dropout_rate = _classifier_dropout_rate(config)
        self.dense = nnx.Linear(
            config.hidden_size,
            config.hidden_size,
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=nnx.initializers.normal(stddev=0.02),
            rngs=rngs,
        )
        self.out_proj = _final_linear(config.hidden_size, num_labels, rngs)

    def __call__(self, hidden: jax.Array, *, dropout_keys=None) -> jax.Array:
        x = dropout(hidden[:, 0], self.dropout_rate, dropout_keys, CLASSIFIER_DROPOUT_SITE)
        x = jnp.tanh(self.dense(x))
        return self.out_proj(dropout(x, self.dropout_rate, dropout_keys, CLASSIFIER_INNER_DROPOUT_SITE))


class SequenceClassifier(_HFModel):
    """Encoder + sequence classification head (``*ForSequenceClassification``). -> logits (B, num_labels).

    Args:
      config: the encoder configuration (``bert``, ``roberta`` or ``deberta-v2``).
      num_labels: number of classes; 1 means regression (one score per example).
      dtype: compute dtype of the encoder and pooler; the classifier runs in float32.
      rngs: parameter initialisation keys.
    """

    head_kind = "classification"

    def __init__(self, config: EncoderConfig, *, num_labels: int, dtype=jnp.float32, rngs: nnx.Rngs):
        if num_labels < 1:
            raise ValueError(f"num_labels={num_labels}: must be at least 1 (1 means regression)")
        self._init_encoder(config, dtype, rngs)
        self.num_labels = num_labels
        self.dropout_rate = _classifier_dropout_rate(config)
        if config.model_type == "roberta":
            self.pooler = None
            self.classifier = RobertaClassificationHead(config, num_labels=num_labels, dtype=dtype, rngs=rngs)
        elif config.model_type == "deberta-v2":
            from jax_adalora.models.deberta.modeling import DebertaContextPooler

            self.pooler = DebertaContextPooler(config, dtype=dtype, rngs=rngs)
            self.classifier = _final_linear(config.pooler_hidden_size or config.hidden_size, num_labels, rngs)
        else:
            self.pooler = BertPooler(config, dtype=dtype, rngs=rngs)
            self.classifier = _final_linear(config.hidden_size, num_labels, rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_keys=None) -> jax.Array:
        # Every head here reads the first token alone, so the last layer computes only that position.
        hidden = self.encoder(
            input_ids, attention_mask, token_type_ids, dropout_keys=dropout_keys, first_token_only=True
        )  # (B, 1, H)
        if isinstance(self.classifier, RobertaClassificationHead):
            return self.classifier(hidden, dropout_keys=dropout_keys)
        if isinstance(self.pooler, BertPooler):
            pooled = self.pooler(hidden)
        else:
            pooled = self.pooler(hidden, dropout_keys=dropout_keys)  # (B, P)
        pooled = dropout(pooled, self.dropout_rate, dropout_keys, CLASSIFIER_DROPOUT_SITE)
        return self.classifier(pooled)  # (B, num_labels), float32

    def _head_weight_map(self) -> WeightMap:
        model_type = self.config.model_type
        if model_type == "roberta":
            return linear_entries("classifier.dense", ("classifier", "dense")) + linear_entries(
                "classifier.out_proj", ("classifier", "out_proj")
            )
        if model_type == "deberta-v2":
            from jax_adalora.models.deberta.weights import deberta_pooler_weight_map

            pooler = _prefixed(deberta_pooler_weight_map(self.config), "", ("pooler",))  # top-level pooler.*
        else:
            pooler = _prefixed(bert_pooler_weight_map(self.config), self.hf_prefix, ("pooler",))  # bert.pooler.*
        return pooler + linear_entries("classifier", ("classifier",))


class QuestionAnswerer(_HFModel):
    """Encoder + span head (``*ForQuestionAnswering``). -> (start_logits, end_logits), each (B, L) float32."""

    head_kind = "qa"

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self._init_encoder(config, dtype, rngs)
        self.num_labels = 2
        self.qa_outputs = _final_linear(config.hidden_size, 2, rngs)

    def __call__(
        self, input_ids, attention_mask, token_type_ids=None, *, dropout_keys=None
    ) -> tuple[jax.Array, jax.Array]:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids, dropout_keys=dropout_keys)  # (B, L, H)
        logits = self.qa_outputs(hidden)  # (B, L, 2)
        return logits[..., 0], logits[..., 1]

    def _head_weight_map(self) -> WeightMap:
        return linear_entries("qa_outputs", ("qa_outputs",))


def build_model(
    config: EncoderConfig, *, head: str | None, num_labels: int = 2, dtype=jnp.float32, rngs: nnx.Rngs
) -> _HFModel:
    """A freshly initialised model: ``head`` is ``"classification"``, ``"qa"`` or ``None`` (bare encoder)."""
    if head == "classification":
        return SequenceClassifier(config, num_labels=num_labels, dtype=dtype, rngs=rngs)
    if head == "qa":
        return QuestionAnswerer(config, dtype=dtype, rngs=rngs)
    if head is None:
        return EncoderModel(config, dtype=dtype, rngs=rngs)
    raise ValueError(f"head={head!r}: expected one of {HEAD_KINDS}")
