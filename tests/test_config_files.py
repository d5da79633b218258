"""The config files under configs/: every profile parses through the command line; the GPU/TPU ones (GLUE, SQuAD
with DeBERTa-v3-base) default to bfloat16 compute, which ``--dtype float32`` overrides; the CPU default stays
float32."""

from pathlib import Path

import pytest

from jax_adalora.cli.run_config import parse_args
from jax_adalora.cli.user_code import load_config_file

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
GLUE_TASKS = ("mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb")
ACCELERATOR_PROFILES = [f"glue.py:{t}" for t in GLUE_TASKS] + [f"glue.py:official-{t}" for t in GLUE_TASKS]
ACCELERATOR_PROFILES += ["squad.py:v1", "squad.py:v2"]


@pytest.mark.parametrize("profile", ACCELERATOR_PROFILES)
def test_accelerator_profiles_default_to_bfloat16_and_a_flag_restores_float32(profile):
    spec = f"{CONFIGS / profile}"
    assert load_config_file(spec)["dtype"] == "bfloat16"
    assert parse_args(["--config", spec]).train.dtype == "bfloat16"
    assert parse_args(["--config", spec, "--dtype", "float32"]).train.dtype == "float32"


@pytest.mark.parametrize("profile", ["movie.py:sentiment", "movie.py:rating", "movie.py:paper"])
def test_the_cpu_profiles_and_the_built_in_default_stay_float32(profile):
    assert parse_args(["--config", f"{CONFIGS / profile}"]).train.dtype == "float32"
    assert parse_args([]).train.dtype == "float32"


def test_official_glue_profiles_take_the_official_scripts_alpha_and_length():
    # NLU/scripts/run_debertav3_<task>.sh of the official AdaLoRA code: --lora_alpha, --max_seq_length, --lora_r
    expected = {"mnli": (16.0, 256, 3), "cola": (32.0, 64, 3), "qnli": (32.0, 512, 2), "mrpc": (32.0, 320, 2)}
    for task, (alpha, length, r_init) in expected.items():
        run = parse_args(["--config", f"{CONFIGS / 'glue.py'}:official-{task}"])
        assert (run.adalora.alpha, run.train.max_seq_length, run.adalora.r_init) == (alpha, length, r_init)


def test_the_former_profile_reproduces_the_built_in_run_before_the_defaults_study():
    former, now = parse_args(["--config", f"{CONFIGS / 'movie.py'}:former"]), parse_args([])
    assert (former.adalora.alpha, former.adalora.orth_reg_weight) == (16.0, 0.1)
    assert (now.adalora.alpha, now.adalora.orth_reg_weight) == (32.0, 0.0)
    assert (former.optim.learning_rate, now.optim.learning_rate) == (1e-3, 2e-3)
    assert dict(former.to_dict()["train"], output_dir="") == dict(now.to_dict()["train"], output_dir="")


@pytest.mark.parametrize("profile", ["llm.py", "llm.py:sentiment", "llm.py:subjectivity"])
def test_the_llm_profiles_run_smollm2_on_a_built_in_task_in_instruction_form(profile):
    """configs/llm.py: the packaged SmolLM2 on a task with an instruction form, sized as its docstring says."""
    from jax_adalora.cli.train import is_causal_lm
    from jax_adalora.tasks.causal_lm_instructions import INSTRUCTION_TEMPLATES

    run = parse_args(["--config", f"{CONFIGS / profile}"])
    assert run.train.model == "smollm2-135m-instruct" and is_causal_lm(run.train.model)
    assert run.train.task in INSTRUCTION_TEMPLATES
    assert run.train.max_train_examples // run.train.batch_size * run.train.epochs == 300
    assert run.train.max_new_tokens > 0 and run.train.dtype == "float32"
