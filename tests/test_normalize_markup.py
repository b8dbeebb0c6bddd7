"""The normaliser beyond numbers: Markdown, tags and emoji, language resolution, the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wyoming_qwen3tts.text import guess_language, normalize, resolve_language

MARKUP = [
    ("# Weather today", "Weather today."),
    ("## Done!", "Done!"),
    ("**Bold** and *italic* and __strong__ and _soft_", "Bold and italic and strong and soft"),
    ("***very*** important", "very important"),
    ("~~old~~ new", "old new"),
    ("- milk\n- eggs\n* bread", "milk,\neggs,\nbread."),
    ("Buy:\n- milk!\n- eggs\n\nThanks", "Buy:\nmilk!\neggs.\n\nThanks"),
    ("- [x] done", "done."),
    ("1. First item", "one: First item"),
    ("[Home Assistant](https://www.home-assistant.io) is great", "Home Assistant is great"),
    ("![a red door](door.png)", "a red door"),
    ("Run `ls -l` now", "Run ls -l now"),
    ("```python\nprint('hi')\n```\nDone", "Done"),
    ("> quoted words", "quoted words"),
    ("Above\n\n---\n\nBelow", "Above\n\n\n\nBelow"),
    ("| Room | Light |\n|---|---|\n| Kitchen | on |", "Room, Light\n\nKitchen, on"),
    ("Good morning ☀️😀", "Good morning"),
    ("Well done 👍🏽!", "Well done!"),
    ("👨‍👩‍👧", ""),
    ("<speak>Hello <break time='1s'/> world</speak>", "Hello world"),
    ("<b>Bold</b> text", "Bold text"),
    ("Tom &amp; Jerry", "Tom and Jerry"),
]


@pytest.mark.parametrize(("written", "spoken"), MARKUP, ids=[written for written, _ in MARKUP])
def test_markup_and_emoji(written: str, spoken: str) -> None:
    assert normalize(written, "en") == spoken


def test_comparison_signs_are_not_taken_for_tags() -> None:
    assert "six and seven" in normalize("5 < 6 and 7 > 3", "en")


def test_markup_is_stripped_in_every_language() -> None:
    assert normalize("**Achtung:** 1 Stunde", "de") == "Achtung: eine Stunde"
    assert normalize("## 天气\n今天21°C 😀", "zh") == "天气。\n今天二十一摄氏度"


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("de", "de"),
        ("de-DE", "de"),
        ("pt_BR", "pt"),
        ("EN-us", "en"),
        ("german", "de"),
        ("Chinese", "zh"),
        ("beijing_dialect", "zh"),
        ("japanese", "ja"),
    ],
)
def test_language_codes_and_model_names_resolve(language: str, code: str) -> None:
    assert resolve_language(language, "") == code


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("안녕하세요 3명", "ko"),
        ("今日は3時です", "ja"),
        ("今天3点", "zh"),
        ("Привет, 3 дня", "ru"),
        ("Das ist der Hund und die Katze", "de"),
        ("Le chat est dans la maison", "fr"),
        ("El perro y la casa", "es"),
        ("Il gatto è nella casa, che bello", "it"),
        ("O gato não está em casa", "pt"),
        ("The cat is in the house", "en"),
        ("42", "en"),
    ],
)
def test_auto_guesses_the_language_from_the_text(text: str, code: str) -> None:
    assert guess_language(text) == code
    assert resolve_language("auto", text) == code
    assert resolve_language(None, text) == code


def test_auto_reads_numbers_in_the_guessed_language() -> None:
    assert normalize("Es sind 21 °C und die Sonne scheint.", "auto") == (
        "Es sind einundzwanzig Grad Celsius und die Sonne scheint."
    )
    assert normalize("Сейчас 21 °C.", "auto") == "Сейчас двадцать один градус Цельсия."
    assert normalize("15:00", "auto") == "fifteen hundred"  # nothing to go by: English, the neutral choice


def test_empty_and_plain_text_pass_through() -> None:
    assert normalize("", "en") == ""
    assert normalize("Turn on the lights.", "en") == "Turn on the lights."
    assert normalize("你好。", "zh") == "你好。"


def run_cli(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "wyoming_qwen3tts.text", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def test_cli_prints_the_normalised_text() -> None:
    assert run_cli("--language", "de", "Am 3. Mai um 14:30 kostet es 12,50 €.") == (
        "Am dritten Mai um vierzehn Uhr dreißig kostet es zwölf Euro fünfzig.\n"
    )


def test_cli_prints_one_sentence_a_line() -> None:
    assert run_cli("--language", "en", "# Shopping\n\n- 2 kg flour\n- 1 l milk") == (
        "Shopping.\ntwo kilograms flour, one liter milk.\n"
    )


def test_cli_takes_model_names_and_standard_input() -> None:
    assert run_cli("--language", "french", stdin="Il fait 21 degrés. Il est 14h30 ?\n\nOui.") == (
        "Il fait vingt et un degrés.\nIl est quatorze heures trente ?\nOui.\n"
    )
    assert run_cli("It", "costs", "$5.") == "It costs five dollars.\n"
