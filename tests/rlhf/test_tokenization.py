import pytest
import torch
from transformers import AutoTokenizer

from services.rlhf.tokenization import encode_prompt, encode_prompt_answer, pad

CHAT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def tokenizer(base_tokenizer_dir):
    return AutoTokenizer.from_pretrained(base_tokenizer_dir)


def test_answer_is_what_the_template_adds_after_the_generation_prompt(tokenizer):
    encoded = encode_prompt_answer(tokenizer, CHAT, "Blue.", max_length=512)
    assert encoded.input_ids[: encoded.prompt_len] == encode_prompt(tokenizer, CHAT)
    answer = tokenizer.decode(encoded.input_ids[encoded.prompt_len :])
    assert answer == "Blue.<|im_end|>\n"


def test_too_long_keeps_the_end_of_the_prompt_and_the_start_of_the_answer(tokenizer):
    long_chat = [{"role": "user", "content": "word " * 300 + "Name a colour."}]
    encoded = encode_prompt_answer(tokenizer, long_chat, "Blue " * 200, max_length=64)
    assert len(encoded.input_ids) == 64
    assert encoded.prompt_len == 32
    prompt_text = tokenizer.decode(encoded.input_ids[: encoded.prompt_len])
    assert prompt_text.endswith("Name a colour.<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(encoded.input_ids[encoded.prompt_len :]).startswith("Blue Blue")


def test_pad_right_and_left():
    ids, mask = pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.dtype == torch.long and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
