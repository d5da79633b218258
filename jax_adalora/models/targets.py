"""Which linear layers get adapters: named presets, or a raw regular expression.

Patterns fully match '.'-joined module paths from the model root, e.g.
``encoder.layers.3.attention.query``. Every encoder here (BERT, RoBERTa, DeBERTa-v2/v3) puts its six
adaptable matrices per layer at the same paths, so the presets hold for all of them:

* ``paper``: the six matrices AdaLoRA adapts (query, key, value, attention output, FFN up, FFN down);
* ``attention``: query, key, value and attention output;
* ``qv``: query and value, as LoRA's original setting.

``DECODER_TARGET_PRESETS`` are the same three choices for the decoder LLMs (``paper``: all seven projections of
every layer). Models offer them as their ``target_presets`` attribute, which
:func:`jax_adalora.adapters.inject_adapters` reads; so the library knows no model's module names.

Example::

    >>> import re
    >>> bool(re.fullmatch(TARGET_PRESETS["qv"], "encoder.layers.0.attention.value"))
    True
"""

from __future__ import annotations

_LAYER = r"(?:.*\.)?layers\.\d+\."

TARGET_PRESETS: dict[str, str] = {
    "paper": _LAYER + r"(?:attention\.(?:query|key|value|output)|intermediate|output)",
    "attention": _LAYER + r"attention\.(?:query|key|value|output)",
    "qv": _LAYER + r"attention\.(?:query|value)",
}

# The decoder LLMs' (models/llama): layer paths ``model.layers.3.self_attn.q_proj``, or
# ``model.layers.self_attn.q_proj`` with scanned layers (one stacked module for every layer).
_DECODER_LAYER = r"model\.layers(?:\.\d+)?\."

DECODER_TARGET_PRESETS: dict[str, str] = {
    # every projection of every layer: attention q, k, v, o and the SwiGLU MLP's gate, up and down
    "paper": _DECODER_LAYER + r"(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)",
    "attention": _DECODER_LAYER + r"self_attn\.(?:q|k|v|o)_proj",
    "qv": _DECODER_LAYER + r"self_attn\.(?:q|v)_proj",
}
