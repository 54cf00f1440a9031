import pytest

from fishersft.data.dataset import read_examples, read_jsonl
from fishersft.errors import DatasetError
from tests.conftest import SAMPLE


def errors_of(lines: list[str]) -> list[str]:
    with pytest.raises(DatasetError) as e:
        read_examples(lines)
    return [str(err) for err in e.value.errors]


def test_reads_the_three_shapes_with_default_ids():
    assert read_examples(['{"prompt": "a", "response": "b"}', "", '{"prompt": "", "response": "c"}'])[1].id == 2
    chat = read_examples(
        [
            '{"id": "x", "messages": [{"role": "user", "content": "hi"}, '
            '{"role": "assistant", "content": "hello"}], "meta": 1}'
        ]
    )[0]
    assert (chat.id, chat.shape, chat.messages[1].content) == ("x", "messages", "hello")
    assert read_examples(['{"id": 7, "text": "words"}'])[0].text == "words"
    assert len(read_jsonl(SAMPLE)) == 200


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 1: not valid JSON"),
        ("[1, 2]", "line 1: expected a JSON object, got list"),
        ('{"prompt": "a"}', 'line 1: missing field "response"'),
        ('{"prompt": "a", "response": "  "}', 'line 1: empty "response"'),
        ('{"prompt": 3, "response": "b"}', 'line 1: "prompt" must be a string, got int'),
        ('{"text": ""}', 'line 1: empty "text"'),
        ('{"input": "a", "output": "b"}', "line 1: unknown shape"),
        ('{"text": "a", "prompt": "b", "response": "c"}', "line 1: ambiguous shape"),
        ('{"id": 1.5, "text": "a"}', 'line 1: "id" must be a string or an integer, got 1.5'),
        ('{"messages": []}', 'line 1: "messages" must be a non-empty list'),
        ('{"messages": [{"role": "user"}]}', 'line 1: messages[0] needs a string "content"'),
        ('{"messages": [{"role": "user", "content": "hi"}]}', 'line 1: no non-empty "assistant" message'),
    ],
)
def test_bad_lines_are_named_with_what_is_wrong(line, message):
    assert errors_of([line])[0].startswith(message)


def test_duplicate_ids_mixed_shapes_and_empty_files():
    assert errors_of(['{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}']) == [
        "line 2: duplicate id 'a' (first used on line 1)"
    ]
    # default ids are line numbers and collide with an explicit id "1"
    assert "duplicate id" in errors_of(['{"id": "1", "text": "x"}', '{"text": "y"}'])[0]
    assert errors_of(['{"text": "x"}', '{"prompt": "p", "response": "r"}'])[0].startswith(
        "line 2: mixed shapes: this line is prompt/response but line 1 is text"
    )
    assert errors_of(["", "  "]) == ["line 1: the dataset is empty: no examples found"]
    assert errors_of([b"\xff\xfe"])[0].startswith("line 1: not UTF-8")


def test_all_errors_are_listed_up_to_a_limit():
    with pytest.raises(DatasetError) as e:
        read_examples(["nope"] * 50, max_errors=20)
    assert len(e.value.errors) == 20 and [x.line for x in e.value.errors][:3] == [1, 2, 3]
    assert e.value.message == "invalid dataset: 20+ bad line(s)"
    assert "line 20: not valid JSON" in str(e.value)
