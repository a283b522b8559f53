"""How the texts of consecutive chunks are joined: a space, or nothing for scripts written without spaces.

A transcript is cut into 30 s chunks at quiet moments, so each boundary is a pause between words. Most
scripts separate words with a space; Chinese, Japanese, Thai, Lao, Khmer, Burmese, Tibetan and Dzongkha do
not (Unicode Standard, chapter 14 and 16 on line breaking of these scripts; UAX #14 classes them as ID/SA),
and a space there would be a character the speaker never said.
"""

from __future__ import annotations

from collections.abc import Iterable

# ISO 639-1 codes of languages written without spaces between words.
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "dz"})

# Code point ranges of scripts (and their punctuation) written without spaces between words.
_UNSPACED_RANGES: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x19E0, 0x19FF),  # Khmer symbols
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation (、。「」)
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x31A0, 0x31FF),  # Bopomofo extended, CJK strokes, Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA9E0, 0xA9FF),  # Myanmar extended-B
    (0xAA60, 0xAA7F),  # Myanmar extended-A
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0xFF00, 0xFFEF),  # halfwidth and fullwidth forms (，！？ and halfwidth katakana)
    (0x20000, 0x3FFFF),  # CJK unified ideographs extensions B and later
)


def is_unspaced(char: str) -> bool:
    """Whether `char` (one character) belongs to a script written without spaces between words."""
    point = ord(char)
    return any(low <= point <= high for low, high in _UNSPACED_RANGES)


def separator(before: str, after: str, language: str | None) -> str:
    """What goes between a chunk's text ending in `before` and the next one's starting with `after` (each one
    character): nothing when either is in an unspaced script, or when `language` (an ISO 639-1 code, None
    when detected) is written without spaces and the two are not both ASCII letters or digits (a Latin word
    inside Chinese text keeps its space); a space otherwise."""
    if is_unspaced(before) or is_unspaced(after):
        return ""
    if language in UNSPACED_LANGUAGES and not (_ascii_word(before) and _ascii_word(after)):
        return ""
    return " "


def join_texts(texts: Iterable[str], language: str | None) -> str:
    """Non-empty chunk texts joined with `separator` at each boundary (empty texts are left out)."""
    parts: list[str] = []
    last = ""
    for text in texts:
        if text:
            if parts:
                parts.append(separator(last, text[0], language))
            parts.append(text)
            last = text[-1]
    return "".join(parts)


def _ascii_word(char: str) -> bool:
    return char.isascii() and char.isalnum()
