"""Which linear layers get adapters: named presets, or a raw regular expression.

Patterns fully match '.'-joined module paths from the model root, e.g.
``encoder.layers.3.attention.query``. Every encoder here (BERT, RoBERTa, DeBERTa-v2/v3) puts its six
adaptable matrices per layer at the same paths, so the presets hold for all of them:

* ``paper``: the six matrices AdaLoRA adapts (query, key, value, attention output, FFN up, FFN down);
* ``attention``: query, key, value and attention output;
* ``qv``: query and value, as LoRA's original setting.

Example::

    >>> import re
    >>> bool(re.fullmatch(resolve_targets("qv"), "encoder.layers.0.attention.value"))
    True
"""

from __future__ import annotations

import re

_LAYER = r"(?:.*\.)?layers\.\d+\."

TARGET_PRESETS: dict[str, str] = {
    "paper": _LAYER + r"(?:attention\.(?:query|key|value|output)|intermediate|output)",
    "attention": _LAYER + r"attention\.(?:query|key|value|output)",
    "qv": _LAYER + r"attention\.(?:query|value)",
}


def resolve_targets(spec: str) -> str:
    """The regex for ``spec``: a preset name from :data:`TARGET_PRESETS`, or else ``spec`` itself as a regex.

    Raises:
      ValueError: ``spec`` is empty or not a valid regular expression.
    """
    if not spec:
        raise ValueError(f"targets={spec!r}: expected a preset name {sorted(TARGET_PRESETS)} or a regex")
    if spec in TARGET_PRESETS:
        return TARGET_PRESETS[spec]
    try:
        re.compile(spec)
    except re.error as err:
        raise ValueError(
            f"targets={spec!r} is neither a preset {sorted(TARGET_PRESETS)} nor a valid regex ({err})"
        ) from None
    return spec
