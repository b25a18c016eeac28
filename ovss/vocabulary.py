"""Class vocabularies: class names, their synonyms (queries) and the background class.

A vocabulary has C classes; class c is scored by Q_c query words (its synonyms), and
the network sees the Q = sum_c Q_c query words flattened in class order. This is the layout
of the official class files of the SCLIP family (``configs/cls_<dataset>.txt``: one class a
line, synonyms separated by ``', '`` in SCLIP/NACLIP, ``','`` in ClearCLIP, ``'; '`` in
ProxyCLIP), and the class scores the max over its synonyms after the softmax over all queries
(SCLIP ``clip_segmentor.py::postprocess_result``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence, Union

from .errors import InputError

ClassesInput = Union[str, Path, Sequence[Union[str, Sequence[str]]]]

BACKGROUND = "background"


@dataclass(frozen=True)
class Vocabulary:
    """C classes, each with a display name and one or more query words.

    Attributes:
        names: (C,) display name of each class.
        queries: (C,) tuple of the query words (synonyms) of each class, in order.
        background: index of the background class (the class that low-confidence pixels
            fall back to), or None.
        official: the list is a dataset protocol's own class file, as read from it (methods whose
            official code treats its dataset list differently from a user's list read this; any
            change, such as an added background class, clears it).
    """

    names: tuple[str, ...]
    queries: tuple[tuple[str, ...], ...]
    background: int | None = None
    official: bool = False

    def __post_init__(self) -> None:
        if len(self.names) != len(self.queries):
            raise ValueError("names and queries must have the same length")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def query_words(self) -> list[str]:
        """(Q,) every query word, flattened in class order."""
        return [w for qs in self.queries for w in qs]

    @property
    def query_index(self) -> list[int]:
        """(Q,) the class index of each query word."""
        return [c for c, qs in enumerate(self.queries) for _ in qs]

    def with_background(self, words: Sequence[str] | None) -> "Vocabulary":
        """Return a copy with a background class at index 0 scored by ``words``.

        ``words=None`` or ``[]`` uses the single word "background". A vocabulary that already
        has a background class gets its words replaced.
        """
        words = tuple(words) if words else (BACKGROUND,)
        if self.background is not None:
            queries = list(self.queries)
            queries[self.background] = words
            return Vocabulary(self.names, tuple(queries), self.background)
        clash = set(w.lower() for w in words) & set(w.lower() for w in self.query_words)
        if clash:
            raise InputError(f"background word(s) {sorted(clash)} are also class names: "
                             "remove them from one of the two lists")
        return Vocabulary((BACKGROUND,) + self.names, (words,) + self.queries, 0)


def _split(line: str, sep: str | None) -> list[str]:
    if sep is None:
        sep = ";" if ";" in line else ","
    return [w.strip() for w in line.split(sep.strip() or sep)]


def parse_classes(classes: ClassesInput, *, check: bool = True) -> Vocabulary:
    """Build a vocabulary from what a user typed or passed.

    Args:
        classes: one of
            - a comma-separated string, ``"car, road, tree"`` (one class per item);
            - a path to a class file, one class per line, a line listing synonyms separated
              by commas (or semicolons), the first being the display name;
            - a multi-line string in the same format as the file;
            - a sequence whose items are a class name or a sequence of synonyms.
        check: reject empty names and duplicates (default). The official class files are
            loaded with ``check=False`` because some repeat a word (e.g. "bed" is both a
            background word and a class in SCLIP's COCO-Object file).

    Returns:
        The vocabulary, without a background class (see :meth:`Vocabulary.with_background`).

    Raises:
        InputError: the list is empty, a name is empty, or a name appears twice.
    """
    rows: list[list[str]]
    if isinstance(classes, Path) or (isinstance(classes, str) and "\n" not in classes
                                     and _looks_like_file(classes)):
        path = Path(classes)
        if not path.is_file():
            raise InputError(f"class file not found: {path}")
        rows = [_split(line, None) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    elif isinstance(classes, str):
        if "\n" in classes:
            rows = [_split(line, None) for line in classes.splitlines() if line.strip()]
        else:
            rows = [[w.strip()] for w in classes.split(",")]
            if all(not w[0] for w in rows):
                rows = []
    else:
        rows = [[item] if isinstance(item, str) else list(item) for item in classes]
        rows = [[w.strip() if isinstance(w, str) else w for w in r] for r in rows]
    if not rows:
        raise InputError("the class list is empty: give at least one class name, "
                         "e.g. --classes \"cat, sofa, window\"")
    if check:
        _check(rows)
    return Vocabulary(tuple(r[0] for r in rows), tuple(tuple(r) for r in rows))


def _looks_like_file(text: str) -> bool:
    return Path(text).suffix.lower() in (".txt", ".csv", ".names") or Path(text).is_file()


def _check(rows: list[list[str]]) -> None:
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if not row or any((not isinstance(w, str)) or not w for w in row):
            raise InputError(f"class {i} has an empty name: remove stray commas or blank items")
        for w in row:
            key = " ".join(w.lower().split())
            if key in seen:
                where = "twice" if seen[key] == i else f"in classes {seen[key]} and {i}"
                raise InputError(f"duplicate class name {w!r} ({where}): each name may appear once")
            seen[key] = i


def read_class_file(path: str | Path, sep: str) -> Vocabulary:
    """Read an official class file with its repository's separator, exactly as the official
    ``get_cls_idx`` does (split on ``sep``; words are stripped, which does not change CLIP's
    tokens since its tokenizer collapses whitespace)."""
    text = Path(path).read_text(encoding="utf-8")
    rows = [[w.strip() for w in line.split(sep)] for line in text.splitlines() if line.strip()]
    return parse_classes(rows, check=False)


def packaged_class_file(family: str, name: str) -> Path:
    """Path of a class file shipped with ovss: ``ovss/classnames/<family>/<name>``."""
    path = Path(str(resources.files("ovss") / "classnames" / family / name))
    if not path.is_file():
        raise InputError(f"no packaged class file {family}/{name}")
    return path
