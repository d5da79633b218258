"""DeBERTa-v2/v3: the Flax NNX modules (``modeling``) and the Hugging Face checkpoint key map (``weights``)."""
