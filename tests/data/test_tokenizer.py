"""SentencePiece tokenisers: special ids, round trips on English and Japanese, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm

from attnlab.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    SentencePieceTokenizer,
    TokenizerConfig,
    TranslationTokenizer,
)

ENGLISH = [
    "Insert a table.",
    "three hundred and twelve",
    "Friday, March 15, 2024",
    "Click the arrow next to the icon.",
]
JAPANESE = ["表を挿入します。", "三百十二", "2024年3月15日金曜日", "アイコンの横の矢印をクリックします。", "憂鬱な薔薇"]


def test_special_ids_are_fixed(small_tokenizer: TranslationTokenizer) -> None:
    processor = spm.SentencePieceProcessor(model_proto=small_tokenizer.source.model_proto)
    pieces = [processor.id_to_piece(i) for i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID)]
    assert pieces == ["<pad>", "<unk>", "<s>", "</s>"]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)


@pytest.mark.parametrize("texts", [ENGLISH, JAPANESE], ids=["en", "ja"])
def test_round_trip(small_tokenizer: TranslationTokenizer, texts: list[str]) -> None:
    tokenizer = small_tokenizer.source
    assert [tokenizer.normalize(text) for text in texts] == texts  # the texts are already normalised
    ids = tokenizer.encode(texts)
    assert all(ids) and not {PAD_ID, UNK_ID, BOS_ID, EOS_ID} & {i for seq in ids for i in seq}
    assert tokenizer.decode(ids) == texts


def test_normalize_is_what_decode_returns(small_tokenizer: TranslationTokenizer) -> None:
    tokenizer = small_tokenizer.target
    raw = "（テスト）  ＡＢＣ　１２３"
    assert tokenizer.normalize(raw) == "(テスト) ABC 123"
    assert tokenizer.decode(tokenizer.encode([raw])) == [tokenizer.normalize(raw)]


def test_decode_drops_specials_and_padding(small_tokenizer: TranslationTokenizer) -> None:
    tokenizer = small_tokenizer.target
    (ids,) = tokenizer.encode(["三百十二"])
    assert tokenizer.decode([[BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]]) == ["三百十二"]


def test_encode_refuses_a_bare_string(small_tokenizer: TranslationTokenizer) -> None:
    with pytest.raises(TypeError, match="wrap it in a list"):
        small_tokenizer.source.encode("三百十二")


def test_training_is_reproducible(training_pairs: list[tuple[str, str]], small_tokenizer: TranslationTokenizer) -> None:
    again = TranslationTokenizer.train(training_pairs, TokenizerConfig(vocab_size=600))
    assert again.source == small_tokenizer.source


def test_joint_save_load(tmp_path: Path, small_tokenizer: TranslationTokenizer) -> None:
    small_tokenizer.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["joint.model", "tokenizer.json"]
    loaded = TranslationTokenizer.load(tmp_path / "tok")
    assert loaded.config == small_tokenizer.config and loaded.source is loaded.target
    assert loaded.source == small_tokenizer.source
    assert loaded.target.encode(JAPANESE) == small_tokenizer.target.encode(JAPANESE)


def test_per_language_bpe_gives_two_models(tmp_path: Path, training_pairs: list[tuple[str, str]]) -> None:
    config = TokenizerConfig(model_type="bpe", vocab_size=400, joint=False)
    tokenizer = TranslationTokenizer.train(training_pairs, config)
    assert tokenizer.source != tokenizer.target
    assert tokenizer.target.decode(tokenizer.target.encode(JAPANESE)) == JAPANESE
    tokenizer.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"source.model", "target.model", "tokenizer.json"}
    loaded = TranslationTokenizer.load(tmp_path)
    assert (loaded.source, loaded.target, loaded.config) == (tokenizer.source, tokenizer.target, config)


def test_single_model_file_round_trip(tmp_path: Path, small_tokenizer: TranslationTokenizer) -> None:
    small_tokenizer.source.save(tmp_path / "m.model")
    assert SentencePieceTokenizer.load(tmp_path / "m.model") == small_tokenizer.source


@pytest.mark.parametrize(
    ("values", "message"),
    [({"model_type": "wordpiece"}, "'wordpiece'"), ({"vocab_size": 3}, "vocab_size \\(3\\)"), ({"vocab": 10}, "vocab")],
)
def test_config_errors_name_the_value(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenizerConfig.from_dict(values)
