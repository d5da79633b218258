"""BERT and RoBERTa: the Flax NNX modules (``modeling``) and the Hugging Face checkpoint key map (``weights``)."""
