"""The bundled models' tokenizer."""

from transformers import PreTrainedTokenizerFast

from d3llm.models.tokenizer import CHAT_TEMPLATE, EOS, MASK, PAD, prompt_ids


def test_special_tokens_and_digits(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.convert_ids_to_tokens([tok.pad_token_id, tok.eos_token_id, tok.mask_token_id]) == [PAD, EOS, MASK]
    pieces = tok.convert_ids_to_tokens(tok("Tom has 1234 apples", add_special_tokens=False).input_ids)
    assert [p for p in pieces if p.strip("Ġ").isdigit()] == ["1", "2", "3", "4"]


def test_round_trip_of_code_and_arith(tiny_tokenizer):
    for text in ["def add(x):\n    return x + 3", "12 + 30 = 42\n#### 42", "ünïcode ok"]:
        ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
        assert tiny_tokenizer.decode(ids) == text


def test_chat_format(tiny_tokenizer, tmp_path):
    ids = prompt_ids(tiny_tokenizer, "What is 2 + 2?")
    assert tiny_tokenizer.decode(ids) == "<|user|>\nWhat is 2 + 2?\n<|assistant|>\n"
    tiny_tokenizer.save_pretrained(tmp_path)
    again = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert again.chat_template == CHAT_TEMPLATE
    assert prompt_ids(again, "What is 2 + 2?") == ids
    assert again.mask_token_id == tiny_tokenizer.mask_token_id
