"""The model-free fusion: clean the AltText, keep what it knows that the VeC lacks.

    alt: "Herschel Settlement Backpack - Khaki/Burgundy | Free Shipping <br>"
    vec: "a brown backpack on a white background"
    →    "a brown backpack on a white background, Herschel Settlement Backpack, Khaki/Burgundy"

1. `clean_alt` strips what is not about the image: HTML tags and entities,
   URLs and domains, file names, camera file stems, shop and stock-photo
   boilerplate, bracketed metadata, sizes and SKU codes; it un-slugs
   `words-joined-by-hyphens`.
2. `salient` finds the named things in what is left: runs of capitalized,
   mixed-case or numeric words ("Golden Gate Bridge", "iPhone 12 Pro",
   "1960s"), with a number's unit ("50 cm"), minus runs whose words the VeC
   already says.
3. `fuse` appends them to the VeC: "<VeC>, <named thing>, <named thing>".

It is the baseline an LLM rewrite must beat, and the default when no model is
given. Everything here runs per record at tens of thousands of records per
second: regexes are compiled once, and the costly ones are guarded by cheap
substring tests.
"""

from __future__ import annotations

import html
import re

MAX_PHRASES = 5
MAX_ADDED_WORDS = 16  # with a ~20-word VeC, still well inside CLIP's 77 tokens


def _both(pattern: str) -> tuple[re.Pattern, re.Pattern]:
    """The pattern (written in lower case) for lower-cased text, and case-insensitive.

    re.IGNORECASE makes these alternations 3-5x slower, so they run on the
    lower-cased text and their spans cut the original; the second form is for
    the rare text whose lower case changes its length (then spans would not line up).
    """
    return re.compile(pattern), re.compile(pattern, re.IGNORECASE)


_TAG = re.compile(r"<[^<>]{0,300}>")
_BRACKETED = re.compile(r"\[[^\]]{0,120}\]|\{[^}]{0,120}\}")
_URL = _both(r"(?:\b(?:https?|ftp)://|\bwww\.)\S+")
_FILE = _both(
    r"\b[\w.-]*\w\.(?:jpe?g|png|gif|webp|bmp|tiff?|svg|heic|pdf|html?|php|aspx?|mp4|mov|avi"
    r"|docx?|zip)\b"
)
_DOMAIN = _both(
    r"\b[\w-]+(?:\.[\w-]+)*\.(?:com|net|org|info|biz|co\.uk|co|uk|de|fr|nl|ru|jp|cn|it|es|au"
    r"|ca|in|io|us)\b"
)
_BOILERPLATE = _both(
    r"\b(?:stock\s+(?:photos?|images?|photography|vectors?|illustrations?|footage|pictures?)"
    r"|royalty[\s-]*free|hi[\s-]*res|high[\s-]*res(?:olution)?|free\s+shipping|buy\s+(?:it\s+)?now"
    r"|shop\s+now|order\s+now|add\s+to\s+(?:cart|basket)|(?:in|out\s+of)\s+stock|best\s+prices?"
    r"|(?:for|on)\s+sale|hot\s+sale|new\s+arrivals?|click\s+here|pre[\s-]?order|wholesale"
    r"|free\s+(?:delivery|returns)|(?:image|picture|photo)s?\s+of|cheap|discount(?:ed)?"
    r"|\d+\s*%\s*off|(?:etsy|amazon|ebay|aliexpress|alibaba|walmart|pinterest|shutterstock"
    r"|alamy|dreamstime|istock(?:photo)?|123rf|depositphotos|getty\s+images|vectorstock"
    r"|fotolia|adobe\s+stock|bigstock|canstock(?:photo)?)(?:\.com)?)\b"
)
_CAMERA = _both(r"\b(?:img|dsc[nf]?|dcim|pxl|mvimg|gopr)[_-]?\d{3,}\w*\b")
_SKU_LABEL = _both(
    r"\b(?:(?:sku|upc|ean|isbn|asin)\s*[#:]?"
    r"|(?:item|art(?:icle)?|ref|part|style|product|model|order|stock)"
    r"(?:\s*(?:code|no\.?|nr\.?|number)\s*[#:]?|\s*[#:]))"
    r"\s*[\w./-]*\d[\w./-]*|\bcode\s*[#:]?\s*[\w./-]*\d[\w./-]*"
)
_SIZE = _both(
    r"\b\d+(?:[.,]\d+)?\s*[x×*]\s*\d+(?:[.,]\d+)?(?:\s*[x×*]\s*\d+(?:[.,]\d+)?)?"
    r"(?:\s*(?:cm|mm|in|inch(?:es)?|px|pixels?|ft|m)\b|\")?"
    r"|\bsizes?\s*:?\s*(?:[2-6]?x{0,3}[sml]|\d+)(?:\s*/\s*(?:[2-6]?x{0,3}[sml]|\d+))*\b"
    r"|\b[2-6]?x{1,3}[sl]\b"
)
NOISE = (_URL, _FILE, _DOMAIN, _BOILERPLATE, _CAMERA, _SKU_LABEL, _SIZE)  # what _noise picks from
_CODE = re.compile(r"\b(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[A-Za-z0-9][\w-]{5,}\b|\b\d{7,}\b")
_LETTER_DIGIT = re.compile(r"[A-Za-z](?=\d)|\d(?=[A-Za-z])")
_SLUG = re.compile(r"[-_]+")
# A separator: " - ", "|" and its kin (spaces around included), " –", "– ". On text
# whose whitespace is folded to single spaces; written to start with one character
# set, which lets re skip ahead to the next candidate instead of trying every
# position (4x faster): the lookbehinds say which of the set it was.
_SEP = re.compile(
    r"[ |•·»«–—](?:(?<= )(?:[-–—~]+ |[|•·»«]+ ?|[–—])|(?<=[|•·»«])[|•·»«]* ?|(?<=[–—]) )"
)
_DIGIT = re.compile(r"\d")
_YEAR = re.compile(r"\b(?:1[89]|20)\d\d\b")
_DOT_SUFFIX = re.compile(
    r"\.(?:jpe?g|png|gif|webp|bmp|tiff?|svg|heic|pdf|html?|php|aspx?|mp4|mov|avi|docx?|zip"
    r"|com|net|org|info|biz|co|uk|de|fr|nl|ru|jp|cn|it|es|au|ca|in|io|us)\b"
)  # on lower-cased text
_HIRES = re.compile(r"hi(?:gh)?[\s-]*res")
_DIMS = re.compile(r"\d\s*[x×*]\s*\d")  # what _SIZE's first form holds ("24 x 36")

# The guards. A noise pattern runs only on a text holding a substring that every
# one of its matches holds: one Aho-Corasick pass over the lower-cased text finds
# them all at once (six regex scans took longer than the patterns they guarded).
# Each word must stay a superset: a pattern a guard skips wrongly leaves noise in.
_BOILERPLATE_BIT, _HIRES_BIT, _CAMERA_BIT, _SKU_BIT, _LABEL_BIT, _MARK_BIT = 1, 2, 4, 8, 16, 32
_GUARD_WORDS = {
    _BOILERPLATE_BIT: """
        stock royalty buy shop order cart basket sale arrival click free image picture photo
        cheap discount price % etsy amazon ebay aliexpress alibaba walmart pinterest alamy
        dreamstime 123rf fotolia
    """,  # shutterstock, istock, getty images... each hold one of these
    _HIRES_BIT: "res",  # hi-res, high res: confirmed by _HIRES ("res" alone is in dress)
    _CAMERA_BIT: "img dsc dcim pxl gopr",
    # An SKU label is sku, upc, ean, isbn, asin or code; or item, art(icle), ... with a
    # mark after it: code, no, nr, number, # or :.
    _SKU_BIT: "sku upc ean isbn asin code",
    _LABEL_BIT: "item art ref part style product model order stock",
    _MARK_BIT: "code no nr number # :",
}


def _guards():
    import ahocorasick  # C extension, shipped for curate's matching

    automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
    bits: dict[str, int] = {}
    for bit, words in _GUARD_WORDS.items():
        for word in words.split():
            bits[word] = bits.get(word, 0) | bit
    for word, bit in bits.items():
        automaton.add_word(word, bit)
    automaton.make_automaton()
    return automaton


_GUARD = _guards()


def _may_split(text: str) -> bool:
    """Whether _SEP could split `text`, its whitespace folded to single spaces (a cheap test)."""
    return (
        "|" in text
        or " -" in text
        or "–" in text
        or "—" in text
        or "•" in text
        or "·" in text
        or "»" in text
        or "«" in text
        or " ~" in text
    )


_EDGE = " \t,;:.!?|/\\-–—_*#+~'\""


def _unbracket(match: re.Match) -> str:
    """Bracketed shop metadata goes ("[DVD]", "{Review}"), unless it dates the image."""
    inner = match.group()[1:-1]
    return f", {inner}," if _YEAR.search(inner) else " "


def _is_code(match: re.Match) -> str:
    """An SKU-like token: long, digit-heavy, letters and digits interleaved ("B07XJ8C8F3")."""
    token = match.group()
    if token.isdigit():
        return " "  # 7+ digits: an item number, not a year or a price
    digits = sum(c.isdigit() for c in token)
    if digits >= 3 and len(_LETTER_DIGIT.findall(token.replace("-", ""))) >= 2:
        return " "
    return token


def clean_alt(alt: str) -> str:
    """The AltText without markup, links, file names, shop boilerplate and codes."""
    text = alt
    if "&" in text:
        text = html.unescape(text)  # first: "&lt;i&gt;" is a tag too
    if "<" in text:
        text = _TAG.sub(" ", text)
    if "[" in text or "{" in text:
        text = _BRACKETED.sub(_unbracket, text)
    low = text.lower()
    noise, digits = _noise(low)
    if len(low) == len(text):
        text = _blank(text, [m.span() for rx in noise for m in rx[0].finditer(low)])
    else:
        for rx in noise:
            text = rx[1].sub(" ", text)
    if " " not in text.strip() and ("-" in text or "_" in text):
        text = _SLUG.sub(" ", text)  # a slug: words-joined-by-hyphens
    words = text.split()
    if digits:  # a code is one word: look only at the long words with a non-letter
        coded = [_CODE.sub(_is_code, w) if len(w) > 5 and not w.isalpha() else w for w in words]
        if coded != words:
            words = " ".join(coded).split()
    text = " ".join(words)
    if _may_split(text):
        parts = [p.strip(_EDGE) for p in _SEP.split(text)]
        text = ", ".join(p for p in parts if p)
    return text.strip(_EDGE)


def _noise(low: str) -> tuple[list[tuple[re.Pattern, re.Pattern]], bool]:
    """The noise patterns worth running on `low` (those whose guard it passes); any digit?"""
    found = []
    if "://" in low or "www." in low:
        found.append(_URL)
    if "." in low and _DOT_SUFFIX.search(low):
        found += (_FILE, _DOMAIN)
    seen = 0
    for _, bit in _GUARD.iter(low):
        seen |= bit
    digits = _DIGIT.search(low) is not None
    if seen & _BOILERPLATE_BIT or (seen & _HIRES_BIT and _HIRES.search(low)):
        found.append(_BOILERPLATE)
    if digits:
        if seen & _CAMERA_BIT:
            found.append(_CAMERA)
        if seen & _SKU_BIT or (seen & _LABEL_BIT and seen & _MARK_BIT):
            found.append(_SKU_LABEL)
    if (  # what each of _SIZE's three forms holds
        "size" in low
        or "xl" in low
        or "xs" in low
        or (digits and ("x" in low or "×" in low or "*" in low) and _DIMS.search(low))
    ):
        found.append(_SIZE)
    return found, digits


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with every span (they may overlap) replaced by one space."""
    if not spans:
        return text
    spans.sort()
    pieces, pos = [], 0
    for start, end in spans:
        if end <= pos:
            continue
        if start > pos:
            pieces.append(text[pos:start])
        pieces.append(" ")
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)


# -- salient content ----------------------------------------------------------

# Lower-case words that may sit inside a name ("Bank of America", "Wisin y Yandel").
_JOINERS = frozenset(
    """
    of de del la le les du da di von van der den y & and the
    """.split()  # noqa: SIM905 -- a word list reads best as words
)
# Capitalized words that name nothing on their own (title case, shop words).
_GENERIC = frozenset(
    """
    a an the and or of for to in on at by with from how what why when new best top free
    sale hot great cute beautiful amazing set pack lot image photo picture pic view
    vector illustration background design ideas idea diy this that these my your our is
    are premium quality original official custom product products item shop store online
    """.split()  # noqa: SIM905 -- a word list reads best as words
)
_UNITS = frozenset(
    """
    cm mm m km kg g mg l ml oz lb lbs in inch inches ft ml mah mb gb tb mp hp w kw v
    years year yrs old pcs pieces st nd rd th
    """.split()  # noqa: SIM905 -- a word list reads best as words
)
_TOKEN = re.compile(
    # Lower-case ASCII words in a row, one token: they start no name, so the loop
    # needs only their first words (what ends a name, or joins it).
    r"[a-z]+(?=[\s,;:!?()\"“”]|\Z)(?: [a-z]+(?=[\s,;:!?()\"“”]|\Z))*"
    # Else a date ("26, 2013"), a number with thousands ("137,321"), a word, a break.
    r"|\d{1,2}, (?:1[89]|20)\d\d\b|\d{1,3}(?:,\d{3})+(?:\.\d+)?|[^\s,;:!?()\"“”]+|[,;:!?()\"“”]"
)
_DIGIT_COMMA = re.compile(r"\d,")
_BREAK = frozenset(',;:!?()"“”')
_CLAUSE = frozenset(":!?")
_CONTENT = re.compile(r"[a-z0-9]+")


def _content(low: str) -> list[str]:
    """The words of lower-cased `low` as _CONTENT finds them, plain text the quick way."""
    plain = low.replace(",", " ").rstrip(".")
    if plain.isascii() and plain.replace(" ", "").isalnum():
        return plain.split()
    return _CONTENT.findall(low)


def _tokens(text: str) -> list[str]:
    """The words and breaks of `text`: str.split where the only break is ", " (most texts)."""
    if "," in text:
        if text.count(",") != text.count(", ") or _DIGIT_COMMA.search(text):
            return _TOKEN.findall(text)  # "a,b", a date, a number with thousands
        text = text.replace(", ", " , ")
    if (
        ";" in text
        or ":" in text
        or "!" in text
        or "?" in text
        or "(" in text
        or ")" in text
        or '"' in text
        or "“" in text
        or "”" in text
    ):
        return _TOKEN.findall(text)
    return text.split()


def _kind(word: str) -> int:
    """2: a name on its own (digits, inner capitals: 2019, iPhone, NFL, P20); 1: Capitalized; 0: neither."""
    if word[0].isdigit():
        return 2
    inner = word[1:]
    if not (inner.islower() and inner.isalpha()) and (
        inner != inner.lower() or any(c.isdigit() for c in inner)
    ):
        return 2
    return 1 if word[0].isupper() else 0


def salient(text: str, known: set[str]) -> list[str]:
    """Named things in cleaned AltText `text` whose words are not all in `known` (the VeC's).

    A clause's first word is capitalized anyway, so on its own it names nothing
    ("Glass jug of milk"); it joins a name only when the next word continues it
    ("Golden Gate Bridge").
    """
    phrases: list[str] = []
    seen: set[str] = set()
    run: list[str] = []
    tentative = False  # the run is one clause-initial Capitalized word so far
    first = True
    for word in _tokens(text):
        if word.islower() and (word.isalpha() or " " in word):  # most words, quickly
            if run:  # the words that join the name, then the one that ends it
                for w in word.split(" "):
                    if w in _JOINERS or (w in _UNITS and run[-1][-1].isdigit()):
                        run.append(w)
                        continue
                    if not tentative or len(run) > 1:
                        _close(run, known, phrases, seen)
                    run, tentative = [], False
                    break
            first = False
            continue
        if word.isalpha():  # Capitalized (1), or ALL CAPS / inner capitals / no case (2)
            kind = 1 if word.istitle() else 2
        elif word in _BREAK:
            if run and (not tentative or len(run) > 1):
                _close(run, known, phrases, seen)
            run, tentative, first = [], False, word in _CLAUSE
            continue
        else:
            word = word.strip(_EDGE)
            if not word:
                continue
            kind = _kind(word)
        lower = word.lower()
        if kind and lower not in _GENERIC:
            if first and kind == 1:
                tentative = True
            elif tentative and len(run) == 1:
                tentative = False
            run.append(word)
        elif run and (lower in _JOINERS or (lower in _UNITS and run[-1][-1].isdigit())):
            run.append(word)
        elif run:
            if not tentative or len(run) > 1:
                _close(run, known, phrases, seen)
            run, tentative = [], False
        first = False
    if run and (not tentative or len(run) > 1):
        _close(run, known, phrases, seen)
    return phrases


def _close(run: list[str], known: set[str], phrases: list[str], seen: set[str]) -> None:
    while run[-1].lower() in _JOINERS:
        run.pop()
        if not run:
            return
    phrase = " ".join(run)
    lower = phrase.lower()
    if lower in seen:
        return
    for w in _content(lower):
        if w not in known and w not in _GENERIC:
            seen.add(lower)
            phrases.append(phrase)
            return


def fuse(alt: str, vec: str) -> str:
    """VeC plus the AltText's named things it lacks; the VeC itself when there are none."""
    cleaned = clean_alt(alt)
    if not cleaned:
        return vec
    known = set(_content(vec.lower()))
    added, n_words = [], 0
    for phrase in salient(cleaned, known):
        size = phrase.count(" ") + 1
        if n_words + size > MAX_ADDED_WORDS:
            continue
        added.append(phrase)
        n_words += size
        if len(added) == MAX_PHRASES:
            break
    if not added:
        return vec
    base = vec.rstrip(" .")
    end = "." if vec.rstrip().endswith(".") else ""
    return f"{base}, {', '.join(added)}{end}"


class RulesFusion:
    """`fuse` as a batch backend, so the rewrite stage treats it like a model."""

    one = staticmethod(fuse)  # per record: the stage need not batch

    def generate(self, pairs: list[tuple[str, str]]) -> list[str]:
        return [fuse(alt, vec) for alt, vec in pairs]
