"""Language names: the model's own ("english") and the BCP-47 codes Home Assistant uses ("en")."""

from __future__ import annotations

from collections.abc import Iterable

AUTO = "auto"

# Model language name -> BCP-47 primary code. Dialects map to their base language.
MODEL_TO_BCP47 = {
    "chinese": "zh",
    "english": "en",
    "german": "de",
    "italian": "it",
    "portuguese": "pt",
    "spanish": "es",
    "japanese": "ja",
    "korean": "ko",
    "french": "fr",
    "russian": "ru",
    "beijing_dialect": "zh",
    "sichuan_dialect": "zh",
}
BCP47_TO_MODEL = {code: name for name, code in MODEL_TO_BCP47.items() if "dialect" not in name}


def to_bcp47(model_language: str) -> str:
    """ "english" -> "en"; an unknown name is returned unchanged."""
    return MODEL_TO_BCP47.get(model_language.lower(), model_language)


def bcp47_codes(model_languages: Iterable[str]) -> list[str]:
    """Model language names as BCP-47 codes, in the model's order, each once (dialects join their base)."""
    return list(dict.fromkeys(to_bcp47(language) for language in model_languages))


def to_model_language(language: str | None, supported: list[str] | tuple[str, ...]) -> str | None:
    """Map a request's language ("en", "en-US", "en_US", "English", "auto") to a model name.

    Returns None when the model does not speak it; "auto" passes through.
    """
    if not language:
        return None
    lowered = language.strip().lower().replace("_", "-")
    if lowered == AUTO:
        return AUTO
    if lowered in supported:
        return lowered
    name = BCP47_TO_MODEL.get(lowered.split("-")[0])
    return name if name in supported else None
