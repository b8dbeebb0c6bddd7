"""Command line: print the text as the server would speak it, one sentence a line.

python -m wyoming_qwen3tts.text --language de "Am 3. Mai um 14:30 kostet es 12,50 €."
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .normalize import normalize
from .sentences import split_sentences


def main(argv: Sequence[str] | None = None) -> int:
    """Normalise the text given (or read from standard input) and print it."""
    parser = argparse.ArgumentParser(
        prog="python -m wyoming_qwen3tts.text",
        description="Print text as Qwen3-TTS will be given it, after normalisation.",
    )
    parser.add_argument(
        "--language",
        "-l",
        default="auto",
        help="BCP-47 code (de, en-US) or model name (german); default: auto",
    )
    parser.add_argument("text", nargs="*", help="the text; standard input when none is given")
    args = parser.parse_args(argv)
    text = " ".join(args.text) if args.text else sys.stdin.read()
    for sentence in split_sentences(text):
        spoken = " ".join(normalize(sentence, args.language).split())
        if spoken:
            print(spoken)
    return 0


if __name__ == "__main__":
    sys.exit(main())
