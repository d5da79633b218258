import pytest

from jax_adalora.config import AdaLoRAConfig


def test_defaults_are_valid():
    config = AdaLoRAConfig()
    assert config.scaling == config.alpha / config.r_init
    config.validate_schedule(100)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"r_init": 4, "r_target": 8}, "r_target"),
        ({"r_init": 0}, "r_init"),
        ({"score": " "}, "score"),
        ({"statistics": "exact"}, "statistics"),
        ({"smoothing": "adam"}, "smoothing"),
        ({"beta1": 1.0}, "beta1"),
        ({"beta2": 0.0}, "beta2"),
        ({"beta1": -0.5}, "beta1"),
        ({"delta_t": 0}, "delta_t"),
        ({"t_init": -1}, "t_init"),
        ({"orth_reg_weight": -0.1}, "orth_reg_weight"),
        ({"gsnr_eps": 0.0}, "gsnr_eps"),
        ({"alpha": 0.0}, "alpha"),
        ({"targets": ""}, "targets"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"AdaLoRAConfig\.{field}="):
        AdaLoRAConfig(**overrides)


def test_schedule_without_budgeting_phase_is_rejected():
    config = AdaLoRAConfig(t_init=60, t_final=40)
    with pytest.raises(ValueError, match=r"t_init=60 must be < total_steps - AdaLoRAConfig\.t_final"):
        config.validate_schedule(100)
    config.validate_schedule(101)
    with pytest.raises(ValueError, match="total_steps"):
        config.validate_schedule(0)


@pytest.mark.parametrize("value, expected", [("5", "expected a divisor of batch_size"), ("-8", "expected >= 0")])
def test_a_microbatch_size_that_does_not_divide_the_batch_names_the_flag(value, expected, capsys):
    from jax_adalora.cli.run_config import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--batch-size", "32", "--microbatch-size", value])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--microbatch-size {value}: " in last_line and expected in last_line
    assert parse_args(["--batch-size", "32", "--microbatch-size", "8"]).train.microbatch_size == 8


def test_help_prints_every_field_even_with_a_percent_sign_in_its_text(capsys):
    """argparse %-formats help texts; t_init's "the first 10 % of the steps" once made --help a traceback."""
    from jax_adalora.cli.run_config import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "the first 10 % of the steps" in text and "--t-final" in text and "--microbatch-size" in text


def test_an_unknown_score_name_fails_when_the_allocator_is_built():
    """Scores can be registered after a config is made, so the name is checked where it is looked up."""
    from jax_adalora.allocator import rank_allocator

    with pytest.raises(ValueError, match="unknown score 'magnitudes': expected one of"):
        rank_allocator(AdaLoRAConfig(score="magnitudes", t_init=1, t_final=1), total_steps=10)
