"""The pure helpers of scripts/benchmarks/bench.py: summaries, FLOP counts, targets and the table (no timing)."""

import pytest

from jax_adalora.models.config import EncoderConfig
from scripts.benchmarks import bench


def test_summarize_median_and_min():
    assert bench.summarize([3.0, 1.0, 2.0]) == {"median_s": 2.0, "min_s": 1.0, "repeats": 3}
    assert bench.summarize([4.0, 1.0, 2.0, 3.0])["median_s"] == 2.5
    with pytest.raises(ValueError, match="no timed repeats"):
        bench.summarize([])


def test_matmul_flops():
    assert bench.matmul_flops(2) == 16
    assert bench.matmul_flops(2048) == 2 * 2048**3


def test_step_flops_bert_by_hand():
    config = EncoderConfig.minilm_l6(num_hidden_layers=1, hidden_size=4, num_attention_heads=2, intermediate_size=8)
    b, s, r = 2, 3, 1
    tokens = b * s
    dense = 2 * tokens * (4 * 16 + 2 * 4 * 8)
    attention = 4 * b * s * s * 4
    adapters = 2 * tokens * r * (4 * 8 + 2 * 12)
    head = 2 * b * 16 + 2 * b * 4 * 2
    flops = bench.step_flops(config, b, s, r)
    assert flops["forward"] == dense + attention + adapters + head
    assert flops["backward"] == dense + 2 * (attention + adapters + head)
    assert flops["total"] == flops["forward"] + flops["backward"]


def test_step_flops_scaling():
    config = EncoderConfig.minilm_l6()
    one = bench.step_flops(config, 8, 64, 16)["total"]
    assert bench.step_flops(config, 16, 64, 16)["total"] == 2 * one  # linear in the batch
    assert bench.step_flops(config.replace(num_hidden_layers=12), 8, 64, 16)["total"] == pytest.approx(2 * one, 0.01)
    # The dense matmuls dominate: 2 FLOPs per weight per token forward, as many backward (input gradients
    # only, the weights are frozen), so about 4 x params_in_matmuls x tokens, not the full fine-tuning 6.
    matmul_params = 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert 1.0 < one / (4 * matmul_params * 8 * 64) < 1.2


def test_step_flops_deberta_counts_relative_attention():
    config = EncoderConfig.deberta_v3_base()
    plain = config.replace(relative_attention=False)
    extra = bench.step_flops(config, 4, 128, 16)["forward"] - bench.step_flops(plain, 4, 128, 16)["forward"]
    span, h = 2 * 256, 768
    assert extra == 2 * (2 * 4 * 128 * span * h + 2 * span * h * h) * 12
    # Ours, skewed: 255 relative positions occur among 128 tokens, and are all that is scored.
    skewed = bench.step_flops(config, 4, 128, 16, skewed_positions=True)["forward"]
    assert skewed - bench.step_flops(plain, 4, 128, 16)["forward"] == 2 * (2 * 4 * 128 * 255 * h + 2 * 255 * h * h) * 12
    # Beyond the table (512 tokens: 1023 relative positions, 512 rows), the whole table, as transformers.
    assert bench.step_flops(config, 1, 512, 16, skewed_positions=True) == bench.step_flops(config, 1, 512, 16)


def test_check_target():
    assert bench.check_target("x", 1.6, ">=", 1.5)["met"]
    assert not bench.check_target("x", 1.2, ">=", 1.5)["met"]
    assert bench.check_target("x", 1.10, "<=", 1.10)["met"]
    with pytest.raises(ValueError):
        bench.check_target("x", 1.0, "<", 1.0)


def test_evaluate_targets_cpu_and_gpu_thresholds():
    medians = {
        bench.SENSITIVITY: 1.0,
        bench.PEFT_STEP: 1.8,
        "ours: fisher step (per-example)": 1.05,
        "ours: gsnr step (per-example)": 1.2,
        bench.OURS_PER_EXAMPLE_ONLY: 1.0,
        bench.TORCH_PER_EXAMPLE_ONLY: 1.4,
    }
    cpu = bench.evaluate_targets(medians, on_gpu=False)
    assert [t["met"] for t in cpu] == [True, True, False, False]
    assert cpu[0]["value"] == pytest.approx(1.8) and cpu[0]["threshold"] == 1.5
    gpu = bench.evaluate_targets(medians, on_gpu=True)
    assert gpu[0]["threshold"] == 2.0 and not gpu[0]["met"]
    # Rows that did not run are skipped rather than failing.
    assert bench.evaluate_targets({bench.SENSITIVITY: 1.0}, on_gpu=False) == []


def test_format_table_rows_and_verdicts():
    rows = [
        {
            "name": bench.SENSITIVITY,
            "median_s": 0.5,
            "min_s": 0.4,
            "compile_s": 12.0,
            "first_call_s": 0.9,
            "peak_mb": 100.0,
            "gflops_per_s": 50.0,
            "fraction_of_matmul": 0.3,
            "ratio_to_sensitivity": 1.0,
        },
        {
            "name": bench.PEFT_STEP,
            "median_s": 1.0,
            "min_s": 0.9,
            "compile_s": None,
            "first_call_s": 2.0,
            "peak_mb": None,
            "gflops_per_s": 25.0,
            "fraction_of_matmul": 0.15,
            "ratio_to_sensitivity": 2.0,
        },
    ]
    targets = bench.evaluate_targets({bench.SENSITIVITY: 0.5, bench.PEFT_STEP: 1.0}, on_gpu=False)
    lines = bench.format_table(rows, targets).splitlines()
    header, rule, first, second = lines[:4]
    assert len(first) == len(second) == len(header) == len(rule)
    assert "0.5000" in first and "30.0" in first
    assert second.split()[-5:-2] == ["2.000", "-", "25.0"]
    assert lines[-1].endswith("2.00 (target >= 1.5): met")


def test_hf_targets_select_the_six_matrices():
    import re

    bert = re.compile(bench.HF_TARGETS["bert"])
    names = [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.0.attention.self.key",
        "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.0.attention.output.dense",
        "bert.encoder.layer.11.intermediate.dense",
        "bert.encoder.layer.11.output.dense",
    ]
    assert all(bert.fullmatch(n) for n in names)
    assert not any(
        bert.fullmatch(n) for n in ("bert.pooler.dense", "classifier", "bert.encoder.layer.0.output.LayerNorm")
    )
    deberta = re.compile(bench.HF_TARGETS["deberta-v2"])
    assert deberta.fullmatch("deberta.encoder.layer.3.attention.self.query_proj")
    assert not deberta.fullmatch("deberta.encoder.rel_embeddings")


def test_info_ratios_only_for_rows_that_ran():
    medians = {bench.SENSITIVITY: 1.2, bench.OURS_BATCH_ONLY: 1.0, bench.PEFT_STEP: 3.0, bench.TORCH_BATCH_ONLY: 2.0}
    ratios = bench.info_ratios(medians)
    assert len(ratios) == 3
    assert [v for k, v in ratios.items() if k.startswith("our sensitivity step")] == [pytest.approx(1.2)]
    assert [v for k, v in ratios.items() if k.startswith("PEFT step")] == [pytest.approx(1.5)]
    assert [v for k, v in ratios.items() if k.startswith("torch batch gradient only")] == [pytest.approx(2.0)]
    text = bench.format_table([], [], ratios)
    assert "PEFT step / torch batch gradient only" in text and ": 1.50" in text


def test_contention_warning():
    assert bench.contention_warning(0.1, 2) is None
    warning = bench.contention_warning(1.7, 2)
    assert warning.startswith("WARNING") and "1.70 on 2 CPUs" in warning


def test_step_flops_with_the_last_layer_at_one_position():
    """The last layer at one query position: keys and values (and p2c) still over every position."""
    config = EncoderConfig.minilm_l6(num_hidden_layers=1, hidden_size=4, num_attention_heads=2, intermediate_size=8)
    b, s, r, h, inter = 2, 3, 1, 4, 8
    dense = 2 * b * s * 2 * h * h + 2 * b * 1 * (2 * h * h + 2 * h * inter)
    attention = 4 * b * 1 * s * h
    adapters = 2 * b * s * r * 2 * (2 * h) + 2 * b * 1 * r * (2 * (2 * h) + 2 * (h + inter))
    head = 2 * b * 16 + 2 * b * 4 * 2
    flops = bench.step_flops(config, b, s, r, last_layer_queries=1)
    assert flops["forward"] == dense + attention + adapters + head
    assert flops["backward"] == dense + 2 * (attention + adapters + head)
    # All positions is the default; on a 2-layer DeBERTa-v3-base, one position saves about 40 % of the step.
    assert bench.step_flops(config, b, s, r, last_layer_queries=s) == bench.step_flops(config, b, s, r)
    deberta = EncoderConfig.deberta_v3_base(num_hidden_layers=2)
    full, one = (bench.step_flops(deberta, 32, 128, 16, last_layer_queries=n)["total"] for n in (None, 1))
    assert 0.35 < 1 - one / full < 0.45


def test_bench_step_pairs_each_row_with_the_sensitivity_step_compiled_the_same_way():
    from scripts.benchmarks import bench_step

    runs = {
        name: {"times": [float(i)]}
        for i, name in enumerate(
            ["sens, library", "gsnr, library", "run, library", "sens, default", "gsnr, default", "run, default"]
        )
    }
    assert bench_step._baselines(runs, 2) == [[0.0]] * 3 + [[3.0]] * 3
    single = {name: runs[name] for name in list(runs)[:3]}
    assert bench_step._baselines(single, 1) == [[0.0]] * 3


def test_machine_summary_names_the_platform_jax_version_and_backend():
    import platform

    import jax

    from jax_adalora.cli.report import machine_summary

    assert machine_summary() == {
        "platform": platform.platform(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }
