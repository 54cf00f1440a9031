"""Turn examples into token ids and the positions whose next token SFT trains on.

A loss token at position t is predicted from the hidden state at t-1, so an encoded example carries `targets`:
the hidden-state positions t-1 of its loss tokens. The first token has no context and is never a loss token.

Sequences are built from pieces (text to tokenize, or token ids) each marked loss or not:
- prompt/response: BOS, prompt, then response + EOS as loss;
- text: BOS, then text + EOS as loss;
- chat: the tokenizer's chat template when it has one (the assistant turns as rendered, end-of-turn markup
  included, are loss); otherwise the template `<|{role}|>\\n{content}{eos}\\n` per message, where the assistant's
  `{content}{eos}` is loss.
Pieces are tokenized one by one, as SFT trainers do, so that loss boundaries fall on token boundaries.

Longer than `max_length`: tokens are dropped from the left of the prompt first (keeping one token of context
before the first loss token), then from the right.

`response_alone`: an example's loss tokens without their prompt, for IFD's denominator (fishersft.features.scores).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from fishersft.data.dataset import Example, read_jsonl
from fishersft.errors import DatasetError, InputError, LineError

Piece = tuple[str | list[int], bool]


@dataclass(frozen=True)
class Encoded:
    input_ids: np.ndarray
    """int32 [length]"""
    targets: np.ndarray
    """int32 positions whose hidden state predicts a loss token (the loss token sits at position + 1)."""
    truncated: bool


def encode_all(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[Encoded]:
    """Encode every example; raise DatasetError for examples left with no loss token."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    encoded = [encode(example, tokenizer, max_length) for example in examples]
    empty = [
        LineError(ex.line, "no loss tokens after tokenization")
        for ex, enc in zip(examples, encoded, strict=True)
        if len(enc.targets) == 0
    ]
    if empty:
        raise DatasetError(empty[:20], more=len(empty) > 20)
    return encoded


def encode(example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Encoded:
    ids: list[int] = []
    loss: list[bool] = []
    for content, is_loss in pieces(example, tokenizer):
        tokens = tokenizer.encode(content, add_special_tokens=False) if isinstance(content, str) else content
        ids.extend(tokens)
        loss.extend([is_loss] * len(tokens))
    truncated = len(ids) > max_length
    if truncated:
        first_loss = loss.index(True) if True in loss else len(loss)
        drop = min(len(ids) - max_length, max(first_loss - 1, 0))
        ids, loss = ids[drop : drop + max_length], loss[drop : drop + max_length]
    targets = np.flatnonzero(np.asarray(loss[1:], dtype=bool)).astype(np.int32)
    return Encoded(np.asarray(ids, dtype=np.int32), targets, truncated)


def response_alone(example: Example, encoded: Encoded, tokenizer: PreTrainedTokenizerBase) -> Encoded | None:
    """The loss tokens `encoded` kept, after a start token alone, all of them loss: the same tokens, scored without
    their prompt. For a chat, every assistant turn as the template rendered it (end-of-turn markup included), one
    after the other. The start token is the BOS, else the EOS (GPT-2-style models see documents after one), so
    every loss token is scored. None for an example with no prompt (text, or an empty prompt)."""
    if example.shape == "text" or (example.shape == "prompt_response" and not example.prompt):
        return None
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise InputError("the tokenizer has neither a BOS nor an EOS token to start a response alone with (IFD)")
    ids = np.concatenate([[start], encoded.input_ids[encoded.targets + 1]]).astype(np.int32)
    return Encoded(ids, np.arange(len(ids) - 1, dtype=np.int32), encoded.truncated)


def pieces(example: Example, tokenizer: PreTrainedTokenizerBase) -> list[Piece]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if example.shape == "prompt_response":
        return [(bos, False), (example.prompt, False), (example.response, True), (eos, True)]
    if example.shape == "text":
        return [(bos, False), (example.text, True), (eos, True)]
    if tokenizer.chat_template:
        return _chat_template_pieces(example, tokenizer)
    out: list[Piece] = [(bos, False)]
    for m in example.messages:
        is_loss = m.role == "assistant"
        out += [(f"<|{m.role}|>\n", False), (m.content, is_loss), (eos, is_loss), ("\n", False)]
    return out


def _chat_template_pieces(example: Example, tokenizer: PreTrainedTokenizerBase) -> list[Piece]:
    """Render growing prefixes of the conversation; each assistant turn's loss text is what its message adds
    to the rendering of the conversation before it (with the generation prompt)."""
    messages = [{"role": m.role, "content": m.content} for m in example.messages]
    out: list[Piece] = []
    done = ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:k], generation_prompt=True) if k else ""
        after = _render(tokenizer, messages[: k + 1])
        if not (before.startswith(done) and after.startswith(before)):
            raise DatasetError(
                [
                    LineError(
                        example.line,
                        "the chat template does not render this conversation "
                        "incrementally, so assistant turns cannot be located",
                    )
                ]
            )
        out += [(before[len(done) :], False), (after[len(before) :], True)]
        done = after
    rest = _render(tokenizer, messages)
    out.append((rest[len(done) :], False))
    return [(text, is_loss) for text, is_loss in out if text]


def encode_file(
    data: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[list[Example], list[Encoded]]:
    """Read a JSONL dataset and encode it: what the embedder and the trainer both see."""
    examples = read_jsonl(data)
    return examples, encode_all(examples, tokenizer, max_length)


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    """The chat template's rendering of `messages`: text, as it is not tokenized."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert isinstance(text, str)  # the other types are those of tokenize=True
    return text
