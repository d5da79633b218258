"""The model zoo, one folder per family (``bert/``, ``deberta/``: a modeling module and a checkpoint key map each):
encoders (BERT, RoBERTa, DeBERTa-v2/v3), task heads, Hugging Face checkpoints, adapter target presets."""

from jax_adalora.models.bert.modeling import BertEncoder, BertPooler
from jax_adalora.models.bert.weights import bert_weight_map
from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.dropout import DropoutKeys, dropout, dropout_keys, example_keys, shared_dropout
from jax_adalora.models.heads import (
    EncoderModel,
    QuestionAnswerer,
    SequenceClassifier,
    build_encoder,
    build_model,
)
from jax_adalora.models.hf_export import save_pretrained, to_hf_state_dict
from jax_adalora.models.model_dirs import ModelNotFoundError, packaged_minilm_path
from jax_adalora.models.pretrained import LoadInfo, from_pretrained, load_tokenizer
from jax_adalora.models.targets import TARGET_PRESETS

__all__ = [
    "TARGET_PRESETS",
    "BertEncoder",
    "BertPooler",
    "DropoutKeys",
    "EncoderConfig",
    "EncoderModel",
    "LoadInfo",
    "ModelNotFoundError",
    "QuestionAnswerer",
    "SequenceClassifier",
    "bert_weight_map",
    "build_encoder",
    "build_model",
    "dropout",
    "dropout_keys",
    "example_keys",
    "from_pretrained",
    "load_tokenizer",
    "packaged_minilm_path",
    "save_pretrained",
    "shared_dropout",
    "to_hf_state_dict",
]
