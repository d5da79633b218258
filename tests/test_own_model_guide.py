"""docs/guides/own-model.md, "A Llama-family LLM from a checkpoint": its block runs at tiny size, offline.

The block reads ``CHECKPOINT`` (SmolLM2-135M-Instruct for a reader); here it reads a random two-layer Llama that
transformers writes with save_pretrained, with a word-level tokenizer, and trains ``STEPS`` = 10 steps.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import jax_adalora as jal

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## A Llama-family LLM from a checkpoint"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = "The capital of France is Paris. Italy Rome. Spain Madrid. Japan Tokyo. Germany Berlin.".split()


def guide_block() -> str:
    page = (ROOT / "docs" / "guides" / "own-model.md").read_text()
    section = page[page.index(SECTION) :]
    return re.search(r"```python\n(.*?)```", section, flags=re.S)[1]


def set_constant(code: str, name: str, value) -> str:
    """The block with its module-level ``NAME = ...`` line set to ``value``."""
    line = re.compile(rf"^{name} = .*$", re.M)
    assert len(line.findall(code)) == 1, f"the block sets {name} once at module level"
    return line.sub(f"{name} = {value!r}", code)


def write_tiny_llama(directory: Path) -> Path:
    """A random 2-layer Llama (hidden 32, tied embeddings) and a word-level tokenizer, as save_pretrained writes."""
    import torch
    import transformers
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(set(WORDS)))}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    inner.add_special_tokens([AddedToken(token, special=True) for token in SPECIALS])
    inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=inner, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(directory)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def test_the_llama_section_trains_saves_reloads_merges_and_generates(tmp_path, monkeypatch, capsys):
    code = guide_block()
    assert 'CHECKPOINT = "smollm2-135m-instruct"' in code  # what a reader runs
    code = set_constant(code, "CHECKPOINT", str(write_tiny_llama(tmp_path / "tiny-llama")))
    code = set_constant(code, "STEPS", 10)
    monkeypatch.chdir(tmp_path)  # the block writes adapters.safetensors into the working directory
    namespace = {"__name__": "__main__"}
    exec(compile(code, "own-model.md", "exec"), namespace)
    out = capsys.readouterr().out

    # scanned layers: one stacked module per projection, its factors leading with the layer axis
    q_proj = namespace["model"].model.layers.self_attn.q_proj
    assert isinstance(q_proj, jal.AdaLoRALinear) and q_proj.P.shape == (2, 32, 8)
    pattern = namespace["pattern"]
    assert (
        len(pattern) == 2 * 7
        and "model.layers.self_attn.q_proj[1]" in pattern
        and "model.layers.mlp.down_proj[0]" in pattern
    )
    kept = np.stack([pattern[f"model.layers.self_attn.q_proj[{i}]"] for i in (0, 1)])
    assert np.all(np.asarray(q_proj.mask[...]) == 1) and np.all(np.asarray(q_proj.lam[...])[~kept] == 0)
    assert "14 matrices keep 56 of 112 ranks" in out  # the budget: r_target x matrices
    assert "reloaded adapters give the same logits: True" in out
    assert "merged model gives the same logits: True" in out
    assert (tmp_path / "adapters.safetensors").exists()
    assert not any(isinstance(m, jal.AdaLoRALinear) for _, m in namespace["merged"].iter_modules())
    new_tokens = np.asarray(namespace["new_tokens"])
    assert new_tokens.shape[0] == 1 and 1 <= new_tokens.shape[1] <= 5
    assert re.search(r"^generated: ", out, flags=re.M)
    final_loss = float(re.search(r"final loss ([\d.]+);", out)[1])
    assert np.isfinite(final_loss)


if __name__ == "__main__":
    pytest.main([__file__, "-n", "0"])
