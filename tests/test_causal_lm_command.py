"""The training and predict commands on a causal LM: a tiny random Llama directory with a word-level tokenizer
and chat template saved beside it; each data form trains a few steps and evaluates (text: --export, whose
merged model and PEFT adapter give the same logits); resume ends with the same
adapters as an uninterrupted run; predict writes one generated row per prompt; bad data is one line."""

from __future__ import annotations

import json

import pytest

from jax_adalora.cli import predict as predict_cli
from jax_adalora.cli import train as train_cli
from tests.test_tasks_causal_lm import VOCAB, make_tokenizer

TINY = dict(
    vocab_size=len(VOCAB),
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=True,
)
PROMPTS = ["the movie is good", "the movie is bad", "hello world", "good review"]
ANSWERS = ["positive", "negative", "hello", "positive"]
FORMS = {
    "text": [{"text": f"{p} : {a}"} for p, a in zip(PROMPTS, ANSWERS, strict=True)],
    "prompt-completion": [{"prompt": f"{p} :", "completion": a} for p, a in zip(PROMPTS, ANSWERS, strict=True)],
    "messages": [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
        for p, a in zip(PROMPTS, ANSWERS, strict=True)
    ],
}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    import torch
    import transformers

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    return directory


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def train_args(model, train, dev, out, *extra):
    return [
        "--model", str(model), "--train-file", str(train), "--validation-file", str(dev),
        "--output-dir", str(out), "--max-seq-length", "32", "--batch-size", "8", "--eval-batch-size", "8",
        "--epochs", "4", "--r-init", "4", "--r-target", "2", "--t-init", "1", "--t-final", "1",
        "--log-every", "1", "--max-new-tokens", "4", "--learning-rate", "0.01", "--no-export", *extra,
    ]  # fmt: skip


def check_exports(out):
    """The merged directory loads in transformers, and PEFT's loading of the adapter on the base gives the same
    logits (the masks and ranks as trained)."""
    import torch
    import transformers
    from peft import PeftModel

    config = json.loads((out / "config.json").read_text())
    merged = transformers.AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    base = transformers.AutoModelForCausalLM.from_pretrained(config["train"]["model"])
    peft = PeftModel.from_pretrained(base, out / "peft_adapter").eval()
    ids = torch.tensor([[1, 10, 11, 12, 13, 2]])
    with torch.no_grad():
        plain = transformers.AutoModelForCausalLM.from_pretrained(config["train"]["model"]).eval()(ids).logits
        assert (merged(ids).logits - plain).abs().max() > 1e-4  # the adapters changed the model
        torch.testing.assert_close(peft(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)
    assert transformers.AutoTokenizer.from_pretrained(out / "merged").chat_template


@pytest.mark.parametrize("form", list(FORMS))
def test_each_form_trains_and_evaluates(tmp_path, llama_dir, form, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", FORMS[form] * 2)
    out = tmp_path / "run"
    extra = ("--export",) if form == "text" else ()
    assert train_cli.main(train_args(llama_dir, data, data, out, *extra)) == 0
    final = json.loads((out / "final_metrics.json").read_text())
    metrics = final["final"]
    assert metrics["loss"] > 0 and metrics["perplexity"] > 1
    assert ("exact_match" in metrics) == (form != "text")
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval"] for r in evals if "eval" in r}
    if form == "text":  # no exact match: the best is the lowest loss, reported negated (higher is better)
        assert final["best_main_metric"] == pytest.approx(max(-e["loss"] for e in evals.values()))
        check_exports(out)
    else:
        assert final["best_main_metric"] == pytest.approx(max(e["exact_match"] for e in evals.values()))
    assert final["total_budget"] == final["target_budget"]
    assert (out / "final_adapters.safetensors").is_file() and (out / "best_adapters.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["task"]["kind"] == "causal_lm"


def test_resume_matches_uninterrupted_and_predict_generates(tmp_path, llama_dir, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", FORMS["prompt-completion"] * 2)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_cli.main(train_args(llama_dir, data, data, whole)) == 0
    assert train_cli.main(train_args(llama_dir, data, data, parts, "--stop-after-steps", "2")) == 0
    assert not (parts / "final_adapters.safetensors").exists()
    assert train_cli.main(train_args(llama_dir, data, data, parts, "--resume")) == 0
    final = "final_adapters.safetensors"
    assert (whole / final).read_bytes() == (parts / final).read_bytes()

    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": "the movie is good :"}, {"prompt": "hello world :", "id": 7}, {"prompt": "good review :"}],
    )
    capsys.readouterr()
    assert predict_cli.main(["--run-dir", str(whole), "--input-file", str(prompts), "--max-new-tokens", "3"]) == 0
    written = whole / "prompts.predictions.jsonl"
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["the movie is good :", "hello world :", "good review :"]
    assert rows[1]["id"] == 7 and all(isinstance(r["generation"], str) for r in rows)
    assert json.loads(capsys.readouterr().out)["rows"] == 3
    # a second prediction to the same default file is refused, in one line
    assert predict_cli.main(["--run-dir", str(whole), "--input-file", str(prompts)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "hello world"}]}])
    assert predict_cli.main(["--run-dir", str(whole), "--input-file", str(chats), "--max-new-tokens", "2"]) == 0
    assert len((whole / "chats.predictions.jsonl").read_text().splitlines()) == 1


def test_bad_data_is_one_line(tmp_path, llama_dir, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", FORMS["text"] * 2)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "hello"}])
    assert train_cli.main(train_args(llama_dir, bad, good, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'prompt' column needs a 'completion' column" in err[0], err
    assert not (tmp_path / "run").exists()


def test_builtin_task_in_instruction_form(tmp_path, llama_dir, capsys):
    """``--task movie-sentiment`` on a causal LM: the encoder task's sentences with the label word as the
    completion; exact match of the greedy completion is the main metric."""
    out = tmp_path / "run"
    args = [
        "--model", str(llama_dir), "--task", "movie-sentiment", "--output-dir", str(out), "--max-seq-length", "32",
        "--batch-size", "8", "--eval-batch-size", "8", "--epochs", "1", "--max-train-examples", "16",
        "--max-eval-examples", "8", "--r-init", "4", "--r-target", "2", "--t-init", "0", "--t-final", "0",
        "--max-new-tokens", "2", "--no-export",
    ]  # fmt: skip
    assert train_cli.main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["task"]["kind"] == "causal_lm" and config["task"]["name"] == "movie-sentiment"
    assert config["task"]["main_metric"] == "exact_match"
    final = json.loads((out / "final_metrics.json").read_text())["final"]
    assert 0 <= final["exact_match"] <= 1 and final["loss"] > 0


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--task", "sst2"], "--task sst2: --model "),
        (["--task", "movie-sentiment", "--max-seq-length", "65"], "--max-seq-length 65: "),
        (
            ["--task", "subjectivity", "--train-file", "x.jsonl", "--validation-file", "x.jsonl"],
            "--task subjectivity: ",
        ),
    ],
)
def test_causal_lm_settings_are_one_line(tmp_path, llama_dir, capsys, extra, expected):
    out = tmp_path / "run"
    assert train_cli.main(["--model", str(llama_dir), "--output-dir", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not out.exists()


def test_base_weights_sharded_over_eight_devices_train_as_one_device(tmp_path, llama_dir, caplog):
    """``--fsdp 8`` on this session's 8 CPU devices: each device holds an eighth of the base weights, and the run
    ends with the loss, ranks and adapters of the same run on one device (GSNR with exact per-example
    statistics, so the per-example moments are checked under the sharding too)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import load_file

    data = write_jsonl(tmp_path / "train.jsonl", FORMS["prompt-completion"] * 2)
    common = ("--score", "gsnr", "--stats", "per-example", "--max-new-tokens", "0")
    repo = Path(__file__).resolve().parent.parent
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {**os.environ, "XLA_FLAGS": " ".join([*flags, "--xla_force_host_platform_device_count=1"])}
    one = subprocess.run(
        [sys.executable, "-m", "jax_adalora.train", *train_args(llama_dir, data, data, tmp_path / "one", *common)],
        env=env, cwd=repo, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    assert "(--fsdp 1)" in one.stderr
    with caplog.at_level("INFO", logger="jax_adalora"):
        assert train_cli.main(train_args(llama_dir, data, data, tmp_path / "fsdp", *common, "--fsdp", "8")) == 0
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("base weights:"))
    whole, local = (float(x.split()[0]) for x in line.removeprefix("base weights: ").split(", ")[:2])
    assert local == pytest.approx(whole / 8, rel=0.05), line
    a = json.loads((tmp_path / "one" / "final_metrics.json").read_text())["final"]
    b = json.loads((tmp_path / "fsdp" / "final_metrics.json").read_text())["final"]
    assert a == pytest.approx(b, rel=1e-4)
    pattern = "rank_pattern.json"
    assert json.loads((tmp_path / "one" / pattern).read_text()) == json.loads((tmp_path / "fsdp" / pattern).read_text())
    wa, wb = (load_file(tmp_path / d / "final_adapters.safetensors") for d in ("one", "fsdp"))
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], rtol=1e-4, atol=5e-4 * float(np.abs(wa[key]).max()), err_msg=key)
