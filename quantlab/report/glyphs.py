"""The characters the report can typeset: a title, author or affiliation with any other is refused when params.yaml
is read (quantlab.stage), not when LuaLaTeX fails on it."""

import unicodedata

# What the report's fonts have glyphs for (FreeSerif; Noto Serif CJK for Chinese, Japanese and Korean; checked
# with fc-query): Latin, Greek, Cyrillic, punctuation, currency and letterlike symbols, CJK ideographs, kana,
# Hangul and full-width forms; no control, invisible or unassigned characters.
CJK = ((0x3000, 0x30FF), (0x3400, 0x4DB5), (0x4E00, 0x9FEA), (0xAC00, 0xD7A3), (0xFF01, 0xFF60))
TYPESET = ((0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x37E), (0x384, 0x527), (0x1E00, 0x1FFF), (0x2010, 0x205E),
           (0x20A0, 0x20B9), (0x2100, 0x213C), *CJK)


def within(char: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= ord(char) <= high for low, high in ranges)


def untypesettable(text: str) -> str | None:
    """The first character of `text` that the report cannot typeset, named as "NAME (U+XXXX)"; None if none."""
    for char in text:
        if not within(char, TYPESET) or unicodedata.category(char) in ("Cc", "Cf", "Cn", "Zl"):
            name = unicodedata.name(char, "a line break" if char in "\r\n" else "a control character")
            return f"{name} (U+{ord(char):04X})"
    return None
