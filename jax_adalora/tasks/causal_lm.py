"""Own data for causal-LM fine-tuning: files read by ``datasets``, tokenised to one sequence per example.

The form of a file is inferred from its columns:

* ``messages``: chat. Each cell is a list of ``{"role", "content"}`` turns (in csv, a JSON string of that list),
  rendered with the tokenizer's chat template (``tokenizer.apply_chat_template``). The loss counts on the tokens
  of **every assistant turn** (its content and the template's end-of-turn text), found as the characters that
  rendering the conversation up to that turn adds after rendering it up to the turn's generation prompt. A turn
  that a template renders differently once later turns follow (some templates rewrite earlier turns) gets no
  loss; the last assistant turn always does, or the row is refused. No EOS is appended: the template ends turns.
* ``prompt`` + ``completion``: the loss counts on the completion only; the prompt is tokenised with the
  tokenizer's special tokens (a Llama BOS), the completion without, and EOS is appended to the completion.
* ``text``: plain language modelling: the loss counts on every token; EOS is appended.

When several forms' columns are present the first in that order is used. Rows are cut at ``max_seq_length``
tokens from the right: a completion, conversation or text that overflows is truncated and counted
(``CausalLMSplit.truncated``). A prompt (or a conversation before its last assistant turn) that leaves no room for
one completion token is refused, not truncated.

``loss_mask`` is aligned with the logits: ``loss_mask[t] = 1`` when the loss of predicting token ``t + 1`` from
position ``t`` counts (for ``P1 P2 | C1 C2 EOS``: ``0 1 1 1 0``). Every problem is a ``TaskDataError`` (a
``ValueError``) of one line naming the file, the row (:func:`jax_adalora.tasks.labelled_texts.row_locator`)
and what was expected.

    >>> data = load_causal_lm_file("train.jsonl", tokenizer, max_seq_length=512)
    >>> data.form, len(data), data.truncated
    ('prompt-completion', 1200, 3)
    >>> batch = causal_lm_batches.CausalLMBatchIterator(data, 8, shuffle=True, seed=0).next_batch()  # loss_mask, ...
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from jax_adalora.tasks.batching import EncodedSplit, pad_rows
from jax_adalora.tasks.data_files import data_name, read_file
from jax_adalora.tasks.labelled_texts import row_locator
from jax_adalora.tasks.sources import TaskDataError

FORMS = ("messages", "prompt-completion", "text")
ACCEPTED_FORMS = (
    "a 'messages' column (chat: a list of {role, content}), 'prompt' and 'completion' columns, or a 'text' column"
)
_CHUNK = 1024


@dataclasses.dataclass(frozen=True, eq=False)
class CausalLMSplit:
    """One tokenised split of causal-LM data.

    Attributes:
      split: ``input_ids`` and ``attention_mask`` (N, L) int32, right-padded to the longest row (L <= the maximum
        length), ``lengths`` (N,); ``token_type_ids`` are zeros.
      loss_mask: (N, L) int32, 1 where the next-token loss counts (see the module docstring).
      form: one of ``FORMS``.
      origin: the file, for messages.
      truncated: rows cut at the maximum length.
      prompts: each row's prompt token ids (for evaluation by generation); empty for ``text``.
      references: each row's reference completion (the last assistant turn's content for chat); empty for ``text``.
    """

    split: EncodedSplit
    loss_mask: np.ndarray
    form: str
    origin: str
    truncated: int = 0
    prompts: tuple[tuple[int, ...], ...] = ()
    references: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.split)

    def summary(self) -> dict:
        """What tokenisation did, for the run log: rows, form, truncated rows, loss tokens."""
        return {
            "file": self.origin,
            "form": self.form,
            "rows": len(self),
            "truncated": int(self.truncated),
            "loss_tokens": int(self.loss_mask.sum()),
        }


# ---- reading -------------------------------------------------------------------------------------------------


def find_form(columns: Sequence[str], origin: str) -> str:
    """The data form of a file with ``columns`` (see the module docstring); a one-line error otherwise."""
    present = list(columns)
    if "messages" in present:
        return "messages"
    if "prompt" in present:
        if "completion" not in present:
            raise TaskDataError(
                f"{origin}: a 'prompt' column needs a 'completion' column beside it; columns: {', '.join(present)}"
            )
        return "prompt-completion"
    if "text" in present:
        return "text"
    raise TaskDataError(f"{origin}: expected {ACCEPTED_FORMS}; columns: {', '.join(present) or 'none'}")


def read_causal_lm_file(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None):
    """A ``.jsonl``, ``.json``, ``.csv``, ``.tsv`` or ``.parquet`` file's rows (a ``datasets.Dataset``, csv cells
    read as text) and its form."""
    rows = read_file(path, cache_dir=cache_dir, as_text=True)
    return rows, find_form(rows.column_names, str(path))


def load_causal_lm_file(
    path: str | os.PathLike, tokenizer, *, max_seq_length: int, cache_dir: str | os.PathLike | None = None
) -> CausalLMSplit:
    """A file read (:func:`read_causal_lm_file`) and tokenised (:func:`encode_causal_lm`)."""
    rows, form = read_causal_lm_file(path, cache_dir=cache_dir)
    return encode_causal_lm(rows, form, tokenizer, max_seq_length=max_seq_length, origin=str(path))


# ---- tokenising ----------------------------------------------------------------------------------------------


def encode_causal_lm(
    rows, form: str, tokenizer, *, max_seq_length: int, origin: str, locate: Callable[[int], str] | None = None
) -> CausalLMSplit:
    """Token ids, attention and loss masks of every row of ``rows`` (a ``Dataset`` or a dict of columns).

    Args:
      rows: the file's rows, with the columns of ``form``.
      form: one of ``FORMS`` (:func:`find_form`).
      tokenizer: a fast transformers tokenizer with an EOS token (and a chat template for ``messages``).
      max_seq_length: tokens per row at most (``--max-seq-length``), at least 2.
      origin: the file, for messages; ``locate`` row -> its place (default :func:`row_locator` of ``origin``).

    Raises:
      TaskDataError: one line naming the file, the row and what was expected.
    """
    if form not in FORMS:
        raise ValueError(f"form {form!r}: expected one of {', '.join(FORMS)}")
    if max_seq_length < 2:
        raise TaskDataError(f"--max-seq-length {max_seq_length}: a causal-LM row needs at least 2 tokens")
    if tokenizer.eos_token_id is None:
        raise TaskDataError(f"{origin}: the tokenizer has no end-of-sequence token; causal-LM data needs one")
    if form == "messages" and not getattr(tokenizer, "chat_template", None):
        raise TaskDataError(
            f"{origin}: a 'messages' column needs a tokenizer with a chat template, and this one has none; "
            "use a chat model's tokenizer, or write 'prompt' and 'completion' columns"
        )
    locate = locate or row_locator(origin)
    columns = {"messages": ("messages",), "prompt-completion": ("prompt", "completion"), "text": ("text",)}[form]
    encode = {"messages": _encode_chats, "prompt-completion": _encode_completions, "text": _encode_texts}[form]
    ids, masks, prompts, references, truncated = [], [], [], [], 0
    if not isinstance(rows, dict):
        rows = rows.select_columns(list(columns))
    for start in range(0, len(rows[columns[0]]) if isinstance(rows, dict) else len(rows), _CHUNK):
        if isinstance(rows, dict):
            chunk = {c: list(rows[c][start : start + _CHUNK]) for c in columns}
        else:
            chunk = rows[start : start + _CHUNK]
        found = encode(chunk, tokenizer, max_seq_length, lambda i, start=start: locate(start + i))
        for row_ids, row_mask, prompt, reference, cut in found:
            ids.append(row_ids)
            masks.append(row_mask)
            if prompt is not None:
                prompts.append(tuple(prompt))
                references.append(reference)
            truncated += cut
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lengths = np.array([len(r) for r in ids], np.int32)
    input_ids = pad_rows(ids, int(pad_id))
    split = EncodedSplit(
        input_ids=input_ids,
        attention_mask=(np.arange(input_ids.shape[1])[None, :] < lengths[:, None]).astype(np.int32),
        token_type_ids=np.zeros_like(input_ids),
        lengths=lengths,
        pad_token_id=int(pad_id),
    )
    return CausalLMSplit(
        split, pad_rows(masks, 0, split.width), form, origin, truncated, tuple(prompts), tuple(references)
    )


def _text(value, column: str, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise TaskDataError(f"{where}: empty {column!r}; every row needs a non-empty {column}")
    if not isinstance(value, str):
        raise TaskDataError(f"{where}: column {column!r} must be text, got {value!r:.80}")
    return value


def _target_mask(length: int, first_target: int) -> list[int]:
    """Loss on predicting tokens ``first_target .. length - 1``: positions ``first_target - 1 .. length - 2``."""
    return [0] * (first_target - 1) + [1] * (length - first_target) + [0]


def _prompt_too_long(where: str, what: str, n: int, max_seq_length: int) -> TaskDataError:
    return TaskDataError(
        f"{where}: the {what} is {n} tokens, and --max-seq-length {max_seq_length} leaves no room for the "
        "completion; raise --max-seq-length or shorten the prompt"
    )


def _encode_texts(chunk, tokenizer, max_seq_length, where):
    texts = [_text(v, "text", where(i)) for i, v in enumerate(chunk["text"])]
    for tokens in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        tokens = [*tokens, tokenizer.eos_token_id]
        cut = len(tokens) > max_seq_length
        tokens = tokens[:max_seq_length]
        yield tokens, _target_mask(len(tokens), 1), None, None, int(cut)


def _encode_completions(chunk, tokenizer, max_seq_length, where):
    prompts = [_text(v, "prompt", where(i)) for i, v in enumerate(chunk["prompt"])]
    completions = [_text(v, "completion", where(i)) for i, v in enumerate(chunk["completion"])]
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    for i, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        if not prompt:
            raise TaskDataError(f"{where(i)}: the prompt has no tokens; every row needs a non-empty prompt")
        if len(prompt) >= max_seq_length:
            raise _prompt_too_long(where(i), "prompt", len(prompt), max_seq_length)
        tokens = [*prompt, *completion, tokenizer.eos_token_id]
        cut = len(tokens) > max_seq_length
        tokens = tokens[:max_seq_length]
        yield tokens, _target_mask(len(tokens), len(prompt)), prompt, completions[i], int(cut)


def _turns(value, where: str) -> list[dict]:
    """A ``messages`` cell as a list of ``{"role", "content"}`` with at least one assistant turn."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise TaskDataError(f"{where}: 'messages' is not a JSON list of {{role, content}} ({err.msg})") from None
    expected = "'messages' must be a list of {role, content} turns with at least one 'assistant' turn"
    if not isinstance(value, list) or not value:
        raise TaskDataError(f"{where}: {expected}, got {value!r:.80}")
    turns = []
    for number, turn in enumerate(value, start=1):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or "content" not in turn:
            raise TaskDataError(f"{where}: turn {number}: {expected}, got {turn!r:.80}")
        content = turn["content"]
        if turn["role"] == "assistant" and (not isinstance(content, str) or not content.strip()):
            raise TaskDataError(f"{where}: turn {number}: empty assistant content; every assistant turn needs text")
        turns.append({"role": turn["role"], "content": content})
    if not any(t["role"] == "assistant" for t in turns):
        raise TaskDataError(f"{where}: {expected}; roles: {', '.join(t['role'] for t in turns)}")
    return turns


def _render(tokenizer, turns: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)


def _encode_chats(chunk, tokenizer, max_seq_length, where):
    for i, value in enumerate(chunk["messages"]):
        turns = _turns(value, where(i))
        full = _render(tokenizer, turns, False)
        spans = []  # character spans of the assistant turns in ``full``
        last = max(k for k, t in enumerate(turns) if t["role"] == "assistant")
        for k, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            before, upto = _render(tokenizer, turns[:k], True), _render(tokenizer, turns[: k + 1], False)
            if full.startswith(upto) and upto.startswith(before):
                spans.append((len(before), len(upto)))
            elif k == last:
                raise TaskDataError(
                    f"{where(i)}: the chat template does not render this conversation's beginning as the start of "
                    "the whole, so its last assistant turn cannot be found; use 'prompt' and 'completion' columns"
                )
        encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        tokens, offsets = encoded["input_ids"], encoded["offset_mapping"]
        targets = [any(a <= s < b for a, b in spans) and j > 0 for j, (s, _) in enumerate(offsets)]
        prompt = tokenizer(_render(tokenizer, turns[:last], True), add_special_tokens=False)["input_ids"]
        first_last = next((j for j, (s, _) in enumerate(offsets) if s >= spans[-1][0]), len(tokens))
        if first_last >= max_seq_length:
            raise _prompt_too_long(where(i), "conversation before the last assistant turn", first_last, max_seq_length)
        cut = len(tokens) > max_seq_length
        tokens, targets = tokens[:max_seq_length], targets[:max_seq_length]
        mask = [int(t) for t in targets[1:]] + [0]
        yield tokens, mask, prompt, turns[last]["content"], int(cut)


# ---- batches -------------------------------------------------------------------------------------------------


# ---- a training run's task -----------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class CausalLMTask:
    """Own causal-LM data as the training command reads it: ``spec`` (kind ``causal_lm``), the ``train`` split
    and ``evals`` (``{"validation": split}``), each a :class:`CausalLMSplit`, and the ``tokenizer`` (to decode
    generations). The main metric is ``exact_match`` of greedy completions when the dev data has prompts
    (prompt/completion or messages), else ``loss`` (lower is better: the command selects by its negative)."""

    spec: object
    train: CausalLMSplit
    evals: dict[str, CausalLMSplit]
    tokenizer: object


def load_causal_lm_task(
    train_file: str | os.PathLike,
    validation_file: str | os.PathLike,
    tokenizer,
    *,
    max_seq_length: int,
    generate: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> CausalLMTask:
    """Both files tokenised (:func:`load_causal_lm_file`) and the task's spec; ``generate`` (``--max-new-tokens``
    above 0) adds exact match to the metrics when the dev file has prompts."""
    from jax_adalora.tasks.registry import TaskSpec

    train = load_causal_lm_file(train_file, tokenizer, max_seq_length=max_seq_length, cache_dir=cache_dir)
    dev = load_causal_lm_file(validation_file, tokenizer, max_seq_length=max_seq_length, cache_dir=cache_dir)
    with_match = generate and bool(dev.prompts)
    metrics = ("loss", "perplexity", "exact_match") if with_match else ("loss", "perplexity")
    spec = TaskSpec(
        name=data_name(train_file),
        kind="causal_lm",
        source="causal_lm",
        text_keys=dict(zip(FORMS, (("messages",), ("prompt", "completion"), ("text",)), strict=True))[train.form],
        metrics=metrics,
        main_metric="exact_match" if with_match else "loss",
    )
    return CausalLMTask(spec, train, {"validation": dev}, tokenizer)


# ---- prompts to continue -------------------------------------------------------------------------------------

PROMPT_COLUMNS = ("messages", "prompt", "text")


def read_prompts(
    path: str | os.PathLike, tokenizer, *, cache_dir: str | os.PathLike | None = None
) -> tuple[list[dict], list[list[int]]]:
    """The rows of a file of prompts to continue (``predict``), and each row's prompt token ids, encoded as
    training encodes prompts: a ``messages`` column (chat turns, trailing assistant turns dropped, rendered with
    the generation prompt), else ``prompt``, else ``text`` (tokenised with the tokenizer's special tokens).
    Other columns (a ``completion``, ids) are kept in the rows."""
    rows = read_file(path, cache_dir=cache_dir, as_text=True)
    origin = str(path)
    column = next((c for c in PROMPT_COLUMNS if c in rows.column_names), None)
    if column is None:
        raise TaskDataError(
            f"{origin}: expected a 'messages', 'prompt' or 'text' column of prompts; columns: "
            f"{', '.join(rows.column_names) or 'none'}"
        )
    locate = row_locator(origin)
    records, prompts = rows.to_list(), []
    for i, record in enumerate(records):
        value = record[column]
        if column != "messages":
            prompts.append(tokenizer(_text(value, column, locate(i)), add_special_tokens=True)["input_ids"])
            continue
        if not getattr(tokenizer, "chat_template", None):
            raise TaskDataError(f"{origin}: a 'messages' column needs a tokenizer with a chat template")
        turns = json.loads(value) if isinstance(value, str) else value
        if not isinstance(turns, list) or not all(isinstance(t, dict) and "role" in t for t in turns):
            raise TaskDataError(f"{locate(i)}: 'messages' must be a list of {{role, content}} turns")
        while turns and turns[-1]["role"] == "assistant":
            turns = turns[:-1]
        if not turns:
            raise TaskDataError(f"{locate(i)}: 'messages' has no turn before the assistant's")
        prompts.append(tokenizer(_render(tokenizer, turns, True), add_special_tokens=False)["input_ids"])
    if not prompts:
        raise TaskDataError(f"{origin}: no rows")
    return records, prompts
