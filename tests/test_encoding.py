import pytest
from transformers import AutoTokenizer

from fishersft.data.dataset import read_examples
from fishersft.data.encoding import encode, encode_all
from fishersft.errors import DatasetError


@pytest.fixture(scope="module")
def tokenizer(llama_dir):
    return AutoTokenizer.from_pretrained(llama_dir, local_files_only=True)


def loss_tokens(enc) -> list[int]:
    return [int(enc.input_ids[t + 1]) for t in enc.targets]


def test_prompt_response_trains_on_response_and_eos(tokenizer):
    ex = read_examples(['{"prompt": "What is 2 plus 2?", "response": "It is 4."}'])[0]
    enc = encode(ex, tokenizer, max_length=100)
    prompt = tokenizer.encode("What is 2 plus 2?", add_special_tokens=False)
    response = tokenizer.encode("It is 4.", add_special_tokens=False)
    assert enc.input_ids.tolist() == [tokenizer.bos_token_id, *prompt, *response, tokenizer.eos_token_id]
    assert loss_tokens(enc) == [*response, tokenizer.eos_token_id]
    assert enc.targets[0] == len(prompt)  # the last prompt position predicts the first response token
    assert not enc.truncated


def test_text_trains_on_every_token_after_bos(tokenizer):
    enc = encode(read_examples(['{"text": "The capital of France is Paris."}'])[0], tokenizer, 100)
    text = tokenizer.encode("The capital of France is Paris.", add_special_tokens=False)
    assert loss_tokens(enc) == [*text, tokenizer.eos_token_id]


def test_truncation_drops_prompt_from_the_left_then_response_from_the_right(tokenizer):
    ex = read_examples(['{"prompt": "one two three four five six seven eight", "response": "nine ten"}'])[0]
    full = encode(ex, tokenizer, 100)
    response = [*tokenizer.encode("nine ten", add_special_tokens=False), tokenizer.eos_token_id]
    cut = encode(ex, tokenizer, len(response) + 2)
    assert cut.truncated and len(cut.input_ids) == len(response) + 2
    assert cut.input_ids.tolist() == full.input_ids.tolist()[-len(response) - 2 :]
    assert loss_tokens(cut) == response
    tiny = encode(ex, tokenizer, 3)  # one token of context, then the start of the response
    assert loss_tokens(tiny) == response[:2]


def test_chat_without_template_uses_the_documented_one(tokenizer):
    assert not tokenizer.chat_template
    ex = read_examples(
        [
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},'
            ' {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]}'
        ]
    )[0]
    enc = encode(ex, tokenizer, 100)
    eos = tokenizer.eos_token_id
    expected = [
        *tokenizer.encode("yo", add_special_tokens=False),
        eos,
        *tokenizer.encode("ciao", add_special_tokens=False),
        eos,
    ]
    assert loss_tokens(enc) == expected
    assert tokenizer.decode(enc.input_ids).startswith("<s><|user|>\nhi</s>\n<|assistant|>\nyo</s>\n<|user|>")


def test_chat_template_assistant_turns_are_the_loss(tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path, local_files_only=True)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    ex = read_examples(
        [
            '{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},'
            ' {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "ok"}]}'
        ]
    )[0]
    enc = encode(ex, tokenizer, 200)
    assert tokenizer.decode(loss_tokens(enc)) == "hello there<|im_end|>\n"


def test_examples_without_loss_tokens_are_rejected_by_line(llama_dir):
    # without BOS or EOS, a one-token text has no token with context before it: nothing to train on
    bare = AutoTokenizer.from_pretrained(llama_dir, local_files_only=True, bos_token=None, eos_token=None)
    examples = read_examples(['{"text": "The capital of France"}', '{"text": "a"}'])
    with pytest.raises(DatasetError) as e:
        encode_all(examples, bare, max_length=64)
    assert [str(x) for x in e.value.errors] == ["line 2: no loss tokens after tokenization"]
