"""Safety filters: a prompt is normalised (Unicode, case, homoglyphs, leetspeak, spaced-out letters) and
checked against the blocklist categories in blocklist.yaml before it conditions anything; refusals are
flagged for review with the session id (`REVIEW`). Actions need no filter beyond protocol.parse's schema."""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import pathlib
import re
import threading
import time
import unicodedata

import yaml

from worldlab import env

log = logging.getLogger(__name__)
BLOCKLIST = pathlib.Path(__file__).resolve().parent / "blocklist.yaml"
# Characters that NFKC keeps but people use as look-alikes or digits-for-letters.
_CONFUSABLE = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "х": "x", "у": "y", "і": "i", "ѕ": "s", "ӏ": "l",
    "α": "a", "ε": "e", "ο": "o", "ν": "v", "κ": "k", "ι": "i",
    "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i", "|": "i",
})
_INVISIBLE = re.compile("[\u200b-\u200f\u2060-\u2064\ufeff\u00ad]")


class PromptRefused(ValueError):
    def __init__(self, category: str):
        super().__init__(f"prompt refused by the safety filter ({category})")
        self.category = category


def normalize(text: str) -> list[str]:
    """Words of `text` after NFKC, case folding, dropping invisible characters and accents, mapping
    homoglyphs and leetspeak; runs of single letters ("p o r n", "p.o.r.n") are joined into one word."""
    text = unicodedata.normalize("NFKD", _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).casefold())
    text = "".join(c for c in text if not unicodedata.combining(c)).translate(_CONFUSABLE)
    words, run = [], []
    for w in re.findall(r"[a-z]+", text):
        if len(w) == 1:
            run.append(w)
            continue
        if run:
            words.append("".join(run))
            run = []
        words.append(w)
    if run:
        words.append("".join(run))
    return words


@functools.lru_cache(maxsize=4)
def load_blocklist(path: pathlib.Path = BLOCKLIST) -> dict[str, list[list[str]]]:
    """category -> terms, each a list of words (a trailing "*" on a word makes it a prefix)."""
    data = yaml.safe_load(path.read_text()) or {}
    return {cat: [str(t).split() for t in terms] for cat, terms in data.items()}


def _word_hit(word: str, pattern: str) -> bool:
    return word.startswith(pattern[:-1]) if pattern.endswith("*") else word == pattern


def match(text: str, blocklist: dict | None = None) -> str | None:
    """The first blocklist category `text` hits, or None."""
    words = normalize(text)
    for cat, terms in (blocklist or load_blocklist()).items():
        for term in terms:
            n = len(term)
            if any(all(_word_hit(words[i + j], term[j]) for j in range(n)) for i in range(len(words) - n + 1)):
                return cat
    return None


def screen_prompt(text) -> str:
    """env.check_prompt (type, empty, length) plus the blocklist; raises ValueError / PromptRefused."""
    text = env.check_prompt(text)
    category = match(text)
    if category is not None:
        raise PromptRefused(category)
    return text


@dataclasses.dataclass(frozen=True)
class Flag:
    t: float
    session: str
    kind: str  # "prompt" | "rate" | ...
    detail: str


class ReviewLog:
    """Flagged events, newest last, bounded; each is also logged at WARNING with its session id."""

    def __init__(self, maxlen: int = 1000):
        self._events: collections.deque[Flag] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def flag(self, session: str, kind: str, detail: str) -> Flag:
        event = Flag(time.time(), session, kind, detail)
        with self._lock:
            self._events.append(event)
        log.warning("flagged for review: session=%s kind=%s %s", session, kind, detail)
        return event

    def events(self, session: str | None = None) -> list[Flag]:
        with self._lock:
            return [e for e in self._events if session is None or e.session == session]


REVIEW = ReviewLog()
