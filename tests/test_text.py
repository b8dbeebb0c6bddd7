"""Sentence splitting as sentence-stream really does it, for whole texts and streamed pieces."""

from __future__ import annotations

import pytest

from wyoming_qwen3tts.text import SentenceBuffer, split_sentences


def feed_all(pieces: list[str]) -> tuple[list[list[str]], list[str]]:
    """Feed pieces one by one; return what each feed gave and what flush gave."""
    buffer = SentenceBuffer()
    return [buffer.feed(piece) for piece in pieces], buffer.flush()


def test_split_sentences_strips_and_keeps_order() -> None:
    text = "  Hello world.   How are you?  I am fine!  "
    assert split_sentences(text) == ["Hello world.", "How are you?", "I am fine!"]


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t "])
def test_split_sentences_of_blank_text_is_empty(text: str) -> None:
    assert split_sentences(text) == []


def test_text_without_end_punctuation_is_one_sentence() -> None:
    assert split_sentences("turn on the lights") == ["turn on the lights"]


def test_abbreviations_do_not_end_a_sentence() -> None:
    assert split_sentences("Dr. Smith is here. He is nice.") == ["Dr. Smith is here.", "He is nice."]
    assert split_sentences("I met Mr. Smith. He said hi.") == ["I met Mr. Smith.", "He said hi."]


def test_decimal_numbers_do_not_end_a_sentence() -> None:
    assert split_sentences("It costs 3.5 dollars. Okay.") == ["It costs 3.5 dollars.", "Okay."]


def test_a_lowercase_word_after_a_period_continues_the_sentence() -> None:
    # sentence-stream only splits before a capital (or a numbered item): "hello. world." stays whole.
    assert split_sentences("hello. world.") == ["hello. world."]


def test_blank_lines_end_a_sentence() -> None:
    assert split_sentences("First paragraph\n\nSecond paragraph") == ["First paragraph", "Second paragraph"]


def test_closing_quotes_stay_with_their_sentence() -> None:
    assert split_sentences('He said "Stop." Then he left.') == ['He said "Stop."', "Then he left."]


def test_short_capitalized_words_are_taken_for_abbreviations() -> None:
    # A capital plus at most two letters before a period may be an abbreviation ("Dr."), so
    # sentence-stream keeps it joined to what follows: short sentences merge, harmless for speech.
    assert split_sentences("Yes. No. Maybe.") == ["Yes. No. Maybe."]
    assert split_sentences("Hello there. Yes. It works.") == ["Hello there.", "Yes. It works."]


def test_markdown_asterisks_are_removed() -> None:
    assert split_sentences("**Note:** be careful. Really careful.") == [
        "Note: be careful.",
        "Really careful.",
    ]
    # The boundary needs a letter right after the space, so "*Really*" does not start a new sentence.
    assert split_sentences("**Note:** be careful. *Really* careful.") == ["Note: be careful. Really careful."]


def test_chinese_and_japanese_punctuation() -> None:
    assert split_sentences("你好。今天天气很好！你呢？") == ["你好。", "今天天气很好！", "你呢？"]
    assert split_sentences("こんにちは。元気ですか？") == ["こんにちは。", "元気ですか？"]


def test_other_scripts() -> None:
    assert split_sentences("Привет. Как дела?") == ["Привет.", "Как дела?"]
    assert split_sentences("¿Qué tal? Muy bien.") == ["¿Qué tal?", "Muy bien."]


def test_buffer_gives_a_sentence_once_the_next_one_begins() -> None:
    fed, rest = feed_all(["Hello world.", " How", " are you?", " Fine."])
    # "Hello world." is known to be complete only when " H" shows a new sentence began.
    assert fed == [[], ["Hello world."], [], ["How are you?"]]
    assert rest == ["Fine."]


def test_buffer_with_pieces_split_mid_word_and_mid_sentence() -> None:
    pieces = ["Hel", "lo wor", "ld. Ho", "w are y", "ou? I a", "m fi", "ne"]
    fed, rest = feed_all(pieces)
    assert fed == [[], [], ["Hello world."], [], ["How are you?"], [], []]
    assert rest == ["I am fine"]


def test_buffer_gives_several_sentences_from_one_piece() -> None:
    fed, rest = feed_all(["First one. Second one. Three"])
    assert fed == [["First one.", "Second one."]]
    assert rest == ["Three"]


def test_buffer_keeps_an_abbreviation_until_it_knows_more() -> None:
    # "Dr." at the end of a piece is held: " Smith" shows it was not the end of a sentence.
    fed, rest = feed_all(["Please call Dr.", " Smith now. Thanks", ". Bye"])
    assert fed == [[], ["Please call Dr. Smith now."], ["Thanks."]]
    assert rest == ["Bye"]


def test_buffer_with_chinese_pieces() -> None:
    # A 。 at the very end of the text is held back until the next piece arrives.
    fed, rest = feed_all(["你好", "。", "今天天气", "很好！你"])
    assert fed == [[], [], ["你好。"], ["今天天气很好！"]]
    assert rest == ["你"]


def test_streamed_and_one_shot_splitting_agree() -> None:
    text = "Dr. Smith is here. He says hello! Is it 3.5 degrees? Yes.\n\nNew paragraph"
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    fed, rest = feed_all(pieces)
    streamed = [sentence for sentences in fed for sentence in sentences] + rest
    assert streamed == split_sentences(text)


def test_flush_of_nothing_and_of_whitespace_is_empty() -> None:
    assert SentenceBuffer().flush() == []
    fed, rest = feed_all(["   ", "\n"])
    assert fed == [[], []]
    assert rest == []


def test_flush_starts_afresh() -> None:
    buffer = SentenceBuffer()
    buffer.feed("First text")
    assert buffer.flush() == ["First text"]
    assert buffer.feed("Second. Text") == ["Second."]
    assert buffer.flush() == ["Text"]


# -- what the issue asks of sentence splitting, with the rejoining step after sentence-stream -------


def test_issue_examples_stay_whole() -> None:
    assert split_sentences("Dr. Smith is here. He waits.") == ["Dr. Smith is here.", "He waits."]
    assert split_sentences("It weighs 3.5 kg. Good.") == ["It weighs 3.5 kg.", "Good."]
    assert split_sentences("Das ist z. B. gut. Ja.") == ["Das ist z. B. gut.", "Ja."]
    assert split_sentences("Das ist z.B. gut. Ja.") == ["Das ist z.B. gut.", "Ja."]
    assert split_sentences("1. First item. 2. Second item.") == ["1. First item.", "2. Second item."]


def test_a_list_number_on_its_own_line_goes_with_its_item() -> None:
    # sentence-stream alone gives ["Intro:\n1.", "First item\n2.", "Second item"].
    assert split_sentences("Intro:\n1. First item\n2. Second item") == [
        "Intro:",
        "1. First item",
        "2. Second item",
    ]


def test_german_dates_with_ordinal_days_stay_whole() -> None:
    # sentence-stream alone cuts after "3." when a capital follows: ["Am 3.", "Mai um ..."].
    assert split_sentences("Am 3. Mai um 14:30 kostet es 12,50 €. Gut.") == [
        "Am 3. Mai um 14:30 kostet es 12,50 €.",
        "Gut.",
    ]
    assert split_sentences("Heute ist der 24. Dezember 2024. Schön.") == [
        "Heute ist der 24. Dezember 2024.",
        "Schön.",
    ]


def test_a_year_or_a_capital_letter_at_the_end_still_ends_a_sentence() -> None:
    assert split_sentences("Das war 2024. Dann kam 2025.") == ["Das war 2024.", "Dann kam 2025."]
    assert split_sentences("Это т. е. хорошо. Да.") == ["Это т. е. хорошо.", "Да."]


def test_chinese_japanese_and_korean_sentence_ends() -> None:
    assert split_sentences("你好。今天是2024年5月3日！好吗？") == ["你好。", "今天是2024年5月3日！", "好吗？"]
    assert split_sentences("はい。3時です！") == ["はい。", "3時です！"]
    assert split_sentences("안녕하세요. 세 시예요!") == ["안녕하세요.", "세 시예요!"]


def test_streamed_pieces_rejoin_across_a_cut_after_a_number() -> None:
    fed, rest = feed_all(["Am 3", ". Mai kommt er", ". Dann", " gehen wir."])
    assert fed == [[], [], ["Am 3. Mai kommt er."], []]
    assert rest == ["Dann gehen wir."]


def test_an_unfinished_end_comes_out_at_flush() -> None:
    fed, rest = feed_all(["Wir zählen bis 3. Dann", " Schluss"])
    assert fed == [[], []]
    assert rest == ["Wir zählen bis 3. Dann Schluss"]


def test_a_long_sentence_is_cut_at_clauses_then_words_into_pieces_that_fit():
    from wyoming_qwen3tts.text.sentences import MAX_SENTENCE_CHARS, split_long

    clauses = ", ".join(f"the {n} lamp is on in the hall" for n in ("first", "second", "third") * 8)
    pieces = split_long(clauses + " and that is all")
    assert all(len(p) <= MAX_SENTENCE_CHARS for p in pieces) and len(pieces) > 1
    assert all(p.endswith(",") for p in pieces[:-1])  # cut after a clause, not inside one
    assert " ".join(pieces) == clauses + " and that is all"
    words = " ".join(["lamp"] * 200)
    assert [len(p) for p in split_long(words)] == [299, 299, 299, 99]  # at spaces, none lost
    assert "".join(split_long("灯" * 700)) == "灯" * 700  # no spaces: cut by length


def test_unpunctuated_text_comes_out_in_pieces_when_streamed_too():
    buffer = SentenceBuffer()
    pieces = buffer.feed("word " * 1000) + buffer.flush()
    assert len(pieces) >= 16 and all(len(p) <= 300 for p in pieces)
