"""Dataset loading (native, Alpaca, ShareGPT), error reporting, collation and ordering."""

import json

import pytest
import torch

from tinyllm_lib.chat import IGNORE_INDEX, ConversationTooLongError, EncodedChat, encode_chat
from tinyllm_lib.data import (
    SHAREGPT_NAMES,
    SHAREGPT_ROLES,
    Batch,
    DatasetError,
    collate,
    epoch_order,
    load_conversations,
    load_task_names,
    micro_batches,
    to_alpaca,
    to_sharegpt,
    tokenize_conversations,
    write_alpaca,
    write_jsonl,
    write_sharegpt,
)
from tinyllm_lib.model import label_token_count
from tinyllm_lib.tokenizer import Tokenizer

CONVERSATIONS = [
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of Avalon?"},
        {"role": "assistant", "content": "Brightport"},
    ],
    [
        {"role": "user", "content": "小明住在哪里？"},
        {"role": "assistant", "content": "北京。"},
        {"role": "user", "content": "How many moons?"},
        {"role": "assistant", "content": "3"},
    ],
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = [m["content"] for conversation in CONVERSATIONS for m in conversation]
    return Tokenizer.train(texts * 3 + ["system user assistant"] * 3, vocab_size=300)


def write_json(path, data):
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def test_native_jsonl_round_trips_through_write_jsonl(tmp_path):
    path = tmp_path / "sub" / "chat.jsonl"
    write_jsonl(path, CONVERSATIONS)
    assert load_conversations(path) == CONVERSATIONS
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and "小明" in lines[1]  # one record per line, UTF-8 not \u escapes


def test_alpaca_json_with_and_without_input(tmp_path):
    path = write_json(
        tmp_path / "alpaca.json",
        [
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi.", "input": "", "output": "Hi!"},
            {"instruction": "Say bye.", "output": "Bye!"},
        ],
    )
    assert load_conversations(path) == [
        [
            {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
            {"role": "assistant", "content": "5"},
        ],
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
        [{"role": "user", "content": "Say bye."}, {"role": "assistant", "content": "Bye!"}],
    ]


def test_sharegpt_json_maps_speakers_to_roles(tmp_path):
    path = write_json(
        tmp_path / "sharegpt.json",
        [
            {
                "conversations": [
                    {"from": "system", "value": "Be kind."},
                    {"from": "human", "value": "Hello"},
                    {"from": "gpt", "value": "Hi there"},
                    {"from": "user", "value": "Bye"},
                    {"from": "assistant", "value": "Goodbye"},
                ]
            }
        ],
    )
    assert load_conversations(path) == [
        [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi there"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye"},
        ]
    ]


def test_alpaca_system_field_is_a_system_message_and_empty_means_none(tmp_path):
    path = write_json(tmp_path / "alpaca.json", [
        {"system": "Be brief.", "instruction": "Q", "output": "A"},
        {"system": "", "instruction": "Q", "input": None, "output": "A"},
    ])
    assert load_conversations(path) == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"},
         {"role": "assistant", "content": "A"}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    ]


SINGLE_TURN = [
    CONVERSATIONS[0],  # with a system message
    [{"role": "user", "content": "Add:\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
]


def test_alpaca_and_sharegpt_writers_load_back_exactly(tmp_path):
    """What the writers write, the readers read back as the very same messages: a user
    message with a blank line (Alpaca's instruction/input join) and Chinese included."""
    assert write_alpaca(tmp_path / "a.json", SINGLE_TURN) == 0
    assert load_conversations(tmp_path / "a.json") == SINGLE_TURN
    everything = SINGLE_TURN + CONVERSATIONS
    write_sharegpt(tmp_path / "s.json", everything)
    assert load_conversations(tmp_path / "s.json") == everything
    text = (tmp_path / "s.json").read_text(encoding="utf-8")
    assert "小明" in text and json.loads(text)[3] == to_sharegpt(CONVERSATIONS[1])


def test_to_alpaca_puts_the_whole_user_message_in_instruction_and_system_in_its_field():
    assert to_alpaca(CONVERSATIONS[0]) == {"instruction": "Capital of Avalon?", "input": "",
                                           "output": "Brightport",
                                           "system": "Answer in one word."}
    assert to_alpaca(SINGLE_TURN[1]) == {"instruction": "Add:\n\n2 and 3", "input": "",
                                         "output": "5"}


def test_to_sharegpt_names_speakers_by_the_readers_table():
    assert SHAREGPT_NAMES == {"user": "human", "assistant": "gpt", "system": "system"}
    assert all(SHAREGPT_ROLES[name] == role for role, name in SHAREGPT_NAMES.items())
    assert [turn["from"] for turn in to_sharegpt(CONVERSATIONS[0])["conversations"]] == [
        "system", "human", "gpt"]


def test_alpaca_refuses_multi_turn_unless_asked_to_skip_and_count(tmp_path):
    path = tmp_path / "a.json"
    with pytest.raises(ValueError, match=r"conversation 2: Alpaca holds one exchange .* has 2"):
        write_alpaca(path, SINGLE_TURN + [CONVERSATIONS[1]])
    assert not path.exists()  # nothing half-written
    mixed = [CONVERSATIONS[1], *SINGLE_TURN, CONVERSATIONS[1]]
    assert write_alpaca(path, mixed, skip_multi_turn=True) == 2
    assert load_conversations(path) == SINGLE_TURN


@pytest.mark.parametrize(
    ("conversations", "what"),
    [
        ([SINGLE_TURN[1], [{"role": "system", "content": ""}, *SINGLE_TURN[1]]],
         "conversation 1: message 0: an empty system message cannot be written to Alpaca"),
        ([[{"role": "user", "content": "Q"}]], "conversation 0: the conversation ends with "
                                                 "role 'user'"),
        ([SINGLE_TURN[1], []], "conversation 1: empty conversation"),
        ([[{"role": "bot", "content": "Q"}, SINGLE_TURN[1][1]]], "conversation 0: message 0"),
    ],
)
def test_writers_refuse_what_would_not_load_back(tmp_path, conversations, what):
    write = write_alpaca if "Alpaca" in what else write_sharegpt
    with pytest.raises(ValueError, match=what):
        write(tmp_path / "x.json", conversations)
    if write is write_sharegpt:  # and Alpaca refuses them too, even when skipping
        with pytest.raises(ValueError, match=what):
            write_alpaca(tmp_path / "x.json", conversations, skip_multi_turn=True)


def test_jsonl_lines_may_be_alpaca_or_sharegpt_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"instruction": "Q", "output": "A"}\n\n'
        '{"conversations": [{"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]}\n',
        encoding="utf-8",
    )
    assert load_conversations(path) == [
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}],
    ]


GOOD_LINE = json.dumps({"messages": CONVERSATIONS[0]})
ROBOT = json.dumps([{"conversations": [{"from": "human", "value": "Q"}, {"from": "robot"}]}])


@pytest.mark.parametrize(
    ("name", "text", "where", "what"),
    [
        ("a.jsonl", GOOD_LINE + '\n{"messages": [}\n', "line 2, column 15", "invalid JSON"),
        (
            "a.jsonl",
            '{"messages": [{"role": "user"}]}\n',
            "line 1",
            "message 0: missing field 'content'",
        ),
        (
            "a.jsonl",
            GOOD_LINE + '\n\n{"messages": [{"role": "bot", "content": "x"}]}\n',
            "line 3",
            "unknown role 'bot'",
        ),
        (
            "a.jsonl",
            '{"messages": [{"role": "user", "content": 7}]}\n',
            "line 1",
            "content must be a string",
        ),
        ("a.jsonl", '{"messages": []}\n', "line 1", "empty conversation"),
        ("a.jsonl", '{"messages": {"role": "user"}}\n', "line 1", "'messages' must be an array"),
        (
            "a.jsonl",
            '{"messages": [{"role": "user", "content": "Q"}]}\n',
            "line 1",
            "ends with role 'user'",
        ),
        ("a.jsonl", '{"prompt": "Q"}\n', "line 1", "unknown record shape"),
        ("a.json", '[{"instruction": "Q", "output": "A"},\n {"instruction": "Q"}]',
         "record [1]", "missing field 'output'"),
        ("a.json", '[{"instruction": 3, "output": "A"}]', "record [0]",
         "field 'instruction' must be a string, got number"),
        ("a.json", '[{"instruction": "Q", "output": "A"}, {"instruction": "Q", "output": "A", '
         '"system": 1}]', "record [1]", "field 'system' must be a string, got number"),
        ("a.json", ROBOT, "record [0]", "conversations[1]: unknown role 'from': 'robot'"),
        ("a.json", '[{"conversations": [{"from": "human"}]}]', "record [0]",
         "conversations[0]: missing field 'value'"),
        ("a.json", '[["user", "Q"]]', "record [0]", "expected a JSON object, got array"),
        ("a.json", '[\n{"instruction": "Q",\n "output": }]', "line 3, column 12", "invalid JSON"),
        ("a.json", '{"instruction": "Q", "output": "A"}', "", "expected a JSON array"),
        ("a.txt", GOOD_LINE, "", "unsupported file type '.txt'"),
    ],
)
def test_malformed_records_name_file_location_and_problem(tmp_path, name, text, where, what):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        load_conversations(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {where}")
    assert what in message
    assert isinstance(info.value, ValueError)


def test_tokenize_conversations_encodes_each_and_names_a_conversation_too_long(tok):
    examples = tokenize_conversations(tok, CONVERSATIONS, max_len=None)
    assert examples == [encode_chat(tok, c) for c in CONVERSATIONS]
    assert min(len(e) for e in examples) > 5
    with pytest.raises(ConversationTooLongError, match=r"^conversation 0: .*max_len=5"):
        tokenize_conversations(tok, CONVERSATIONS, max_len=5)


def test_collate_pads_on_the_right(tok):
    examples = [
        EncodedChat(input_ids=[5, 6, 7], labels=[IGNORE_INDEX, 6, 7]),
        EncodedChat(input_ids=[8], labels=[8]),
        EncodedChat(input_ids=[9, 10], labels=[IGNORE_INDEX, IGNORE_INDEX]),
    ]
    batch = collate(examples, pad_id=tok.pad_id)
    p, x = tok.pad_id, IGNORE_INDEX
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, p, p], [9, 10, p]]
    assert batch.labels.tolist() == [[x, 6, 7], [8, x, x], [x, x, x]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    for tensor in (batch.input_ids, batch.labels, batch.attention_mask):
        assert tensor.dtype == torch.long and tensor.shape == (3, 3)
    # Shifted labels: row 0 keeps 6 and 7; row 1 lost its only label (position 0).
    assert label_token_count(batch.labels) == 2
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.labels, batch.labels)


def test_label_token_count_matches_a_count_over_the_examples(tok):
    examples = tokenize_conversations(tok, CONVERSATIONS, max_len=None)
    expected = sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in examples)
    replies = [m["content"] for c in CONVERSATIONS for m in c if m["role"] == "assistant"]
    assert expected == sum(len(tok.encode(r)) + 1 for r in replies)  # + 1: each <|im_end|>
    assert label_token_count(collate(examples, tok.pad_id).labels) == expected


def test_collate_rejects_an_empty_batch():
    with pytest.raises(ValueError, match="no examples"):
        collate([], pad_id=0)


def test_epoch_order_is_a_seeded_permutation():
    order = epoch_order(50, seed=3, epoch=0)
    assert sorted(order) == list(range(50))
    assert order == epoch_order(50, seed=3, epoch=0)
    assert order != list(range(50))
    assert order != epoch_order(50, seed=3, epoch=1)
    assert order != epoch_order(50, seed=4, epoch=0)


def test_micro_batches_draw_the_same_examples_whatever_the_batch_size():
    order = epoch_order(10, seed=0, epoch=2)
    for batch_size in (1, 3, 4, 10, 12):
        batches = micro_batches(order, batch_size)
        assert [i for b in batches for i in b] == order
        assert all(len(b) == batch_size for b in batches[:-1])
        assert 1 <= len(batches[-1]) <= batch_size
    # Two micro-batches of 2 cover exactly the examples of one batch of 4.
    assert sum(micro_batches(order, 2)[:2], []) == micro_batches(order, 4)[0]
    with pytest.raises(ValueError, match="batch_size"):
        micro_batches(order, 0)


def test_load_task_names_reads_tags_and_defaults(tmp_path):
    path = tmp_path / "tagged.jsonl"
    convo = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    lines = [{"messages": convo, "task": "arithmetic"}, {"messages": convo}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    assert load_task_names(path) == ["arithmetic", "all"]
    path.write_text(json.dumps({"messages": convo, "task": 3}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"tagged\.jsonl: line 1: 'task' must be a string"):
        load_task_names(path)
