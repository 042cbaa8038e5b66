"""tokenizer.json export: transformers.AutoTokenizer gives our ids on any text, and converts back exactly."""

import json
import random

import pytest

transformers = pytest.importorskip("transformers", reason="HF export tests need transformers (extra 'hf')")

from after_training_runs import END_OF_TEXT, train_tiny_tokenizer  # noqa: E402

from dist_llm.export.hf_tokenizer import (  # noqa: E402
    TokenizerNotConvertible,
    tokenizer_from_json,
    write_hf_tokenizer,
)
from dist_llm.tokenizer import Tokenizer  # noqa: E402
from dist_llm.tokenizer.files import bytes_to_unicode  # noqa: E402

USER_TURN = "<|user turn|>"  # a special token with a space in it: stored literally, not byte-spelled

FIXED_TEXTS = [
    "",
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's a test; we'll see.",
    "   leading spaces, trailing spaces   ",
    "tabs\t\tand\nnewlines\n\n\n  \n",
    "Ça va? Naïve café. 東京は大きい。 Привет, мир! 🙂🙂 👩‍👩‍👧",
    f"{END_OF_TEXT}",
    f"a{END_OF_TEXT}b {END_OF_TEXT}{END_OF_TEXT}\n{END_OF_TEXT} c",
    f"{USER_TURN}hi{END_OF_TEXT}{USER_TURN} <|user|> <|endoftext",
    "non-breaking\u00a0space, em\u2003space, zero\u200bwidth, combining e\u0301",
    "'s 't 're 've 'm 'll 'd 'S 'LL word's",
    "x = [1, 2, 3]; y = {'k': 3.14159}  # code\n    return x\r\n",
    "\x00\x01\x7f control bytes \ufeff bom",
]

ALPHABET = (
    list("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,;:'\"!?()[]{}-_/\\")
    + [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000"]
    + list("éüßçñøåЖжΩλ東京語中文한국어") + ["🙂", "🚀", "👍🏽", "\u0301"]
    + [END_OF_TEXT, USER_TURN, "'s", "'ll"]
)


def random_texts(n, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    work = tmp_path_factory.mktemp("tok")
    trained = train_tiny_tokenizer(work)
    ours = Tokenizer(trained.vocab, trained.merges, [END_OF_TEXT, USER_TURN])
    write_hf_tokenizer(ours, work / "hf", model_max_length=1024, eos_token=END_OF_TEXT)
    theirs = transformers.AutoTokenizer.from_pretrained(work / "hf")
    return ours, theirs, work / "hf"


@pytest.mark.parametrize("text", FIXED_TEXTS + random_texts(200))
def test_auto_tokenizer_ids_equal_ours(tokenizers, text):
    ours, theirs, _ = tokenizers
    ids = ours.encode(text)
    assert theirs(text)["input_ids"] == ids
    assert theirs.decode(ids) == ours.decode(ids)


def test_special_tokens_keep_their_ids(tokenizers):
    ours, theirs, _ = tokenizers
    for token in (END_OF_TEXT, USER_TURN):
        assert theirs.convert_tokens_to_ids(token) == ours.token_id(token)
    assert theirs.eos_token == END_OF_TEXT
    assert theirs.eos_token_id == ours.token_id(END_OF_TEXT)
    assert len(theirs) == ours.vocab_size


def test_vocab_is_byte_spelled_like_gpt2(tokenizers):
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    ours, _, hf_dir = tokenizers
    vocab = json.loads((hf_dir / "tokenizer.json").read_text())["model"]["vocab"]
    id_of_byte = {bytes_: i for i, bytes_ in ours.vocab.items() if len(bytes_) == 1}
    assert [vocab[table[b]] for b in range(256)] == [id_of_byte[bytes([b])] for b in range(256)]
    assert all(" " not in token for token in vocab if token != USER_TURN)


def test_tokenizer_json_converts_back_exactly(tokenizers):
    ours, _, hf_dir = tokenizers
    back = tokenizer_from_json(hf_dir / "tokenizer.json")
    assert back.fingerprint == ours.fingerprint
    text = FIXED_TEXTS[7] + FIXED_TEXTS[5]
    assert back.encode(text) == ours.encode(text)


def _edited_tokenizer_json(hf_dir, tmp_path, edit):
    doc = json.loads((hf_dir / "tokenizer.json").read_text())
    edit(doc)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "pre_tokenizer is not ByteLevel"),
        (lambda d: d.update(pre_tokenizer={"type": "Metaspace"}), "not the GPT-2 regex"),
        (lambda d: d.update(normalizer={"type": "NFC"}), "has a normalizer"),
        (lambda d: d["model"].update(type="WordPiece"), "model type is 'WordPiece'"),
        (lambda d: d["model"].update(byte_fallback=True), "model.byte_fallback=True"),
        (lambda d: d["model"].update(ignore_merges=True), "model.ignore_merges=True"),
        (lambda d: d["added_tokens"][0].update(special=False), "not special"),
        (lambda d: d["model"]["vocab"].update({"▁word": 9999}), "not in the byte-level alphabet"),
    ],
)
def test_unconvertible_tokenizer_json_says_why(tokenizers, tmp_path, edit, message):
    _, _, hf_dir = tokenizers
    path = _edited_tokenizer_json(hf_dir, tmp_path, edit)
    with pytest.raises(TokenizerNotConvertible, match=message) as excinfo:
        tokenizer_from_json(path)
    assert str(path) in str(excinfo.value)
