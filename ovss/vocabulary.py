"""Class vocabularies: class names, their synonyms (queries) and the background class.

A vocabulary has C classes; class c is scored by Q_c query words (its synonyms), and
the network sees the Q = sum_c Q_c query words flattened in class order. This is the layout
of the official class files of the SCLIP family (``configs/cls_<dataset>.txt``: one class a
line, synonyms separated by ``', '`` in SCLIP/NACLIP, ``','`` in ClearCLIP, ``'; '`` in
ProxyCLIP), and the class scores the max over its synonyms after the softmax over all queries
(SCLIP ``clip_segmentor.py::postprocess_result``).
"""

from __future__ import annotations

import re
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

    Text is never taken for a file name: a class file is read only when asked for explicitly, as a
    :class:`pathlib.Path` here (:func:`read_classes_file`), ``--classes @FILE`` or ``--classes-file
    FILE`` on the command line (:func:`classes_argument`); the web page reads no file at all
    (docs/security.md).

    Args:
        classes: one of
            - a comma-separated string, ``"car, road, tree"`` (one class per item);
            - a multi-line string, one class a line, a line listing synonyms separated by
              commas (or semicolons), the first being the display name;
            - a :class:`pathlib.Path` of a class file in that format (see :func:`read_classes_file`);
            - a sequence whose items are a class name or a sequence of synonyms.
        check: reject empty names and duplicates (default). The official class files are
            loaded with ``check=False`` because some repeat a word (e.g. "bed" is both a
            background word and a class in SCLIP's COCO-Object file).

    Returns:
        The vocabulary, without a background class (see :meth:`Vocabulary.with_background`).

    Raises:
        InputError: the list is empty, a name is empty, not a string or appears twice; a single
            name that looks like a file name (``"classes.txt"``, ``"@classes.txt"``: pass a
            :class:`pathlib.Path`); an unreadable class file.
    """
    rows: list[list[str]]
    if isinstance(classes, Path):
        return read_classes_file(classes, check=check)
    if isinstance(classes, str):
        text = classes.lstrip(BOM)
        if "\n" in text:
            rows = [_split(line, None) for line in text.splitlines() if line.strip()]
        else:
            rows = [[w.strip()] for w in text.split(",")]
            if all(not w[0] for w in rows):
                rows = []
            elif len(rows) == 1:
                _refuse_file_name(rows[0][0])
    elif hasattr(classes, "__iter__") and not isinstance(classes, (bytes, dict)):
        rows = []
        for item in classes:
            iterable = hasattr(item, "__iter__") and not isinstance(item, (str, bytes, dict))
            words = [item] if isinstance(item, str) else list(item) if iterable else None
            if words is None or not all(isinstance(w, str) for w in words):
                raise InputError(f"class names must be strings (or lists of synonyms), got {item!r}")
            rows.append([w.strip() for w in words])
    else:
        raise InputError(f"classes must be a comma-separated string, a list of names or a pathlib.Path of a "
                         f"class file, not a {type(classes).__name__}")
    if not rows:
        raise InputError("the class list is empty: give at least one class name, "
                         "e.g. --classes \"cat, sofa, window\"")
    if check:
        _check(rows)
    return Vocabulary(tuple(r[0] for r in rows), tuple(tuple(r) for r in rows))


#: a UTF-8 byte-order mark as Python decodes it (Windows editors write one)
BOM = "\ufeff"
#: largest class file read (the largest official list, ADE-847 with synonyms, is 30 kB)
MAX_CLASS_FILE_BYTES = 4 << 20
CLASS_FILE_SUFFIXES = (".txt", ".csv", ".names", ".json", ".yaml", ".yml", ".lst")


def looks_like_file_name(text: str) -> bool:
    """Whether a lone class name is surely a file name (``@FILE``, ``classes.txt``): decided from the
    text alone, never by looking at the file system (so no message tells whether a file exists)."""
    return text.startswith("@") or Path(text).suffix.lower() in CLASS_FILE_SUFFIXES


def _refuse_file_name(name: str) -> None:
    """A lone class that is surely a file name was meant as one: say how to read a file."""
    if looks_like_file_name(name):
        raise InputError(f"{name[:80]!r} looks like a file name, not a class: read a class file with "
                         f"--classes @FILE or --classes-file FILE (Python: classes=pathlib.Path(...)), "
                         "or list the classes separated by commas")


def read_classes_file(path: str | Path, *, check: bool = True) -> Vocabulary:
    """Read a class file the user named explicitly.

    Format: UTF-8 text (a leading byte-order mark is dropped), one class a line, synonyms after
    commas (or semicolons), blank lines skipped; or FC-CLIP's ``id:name,synonym`` lines when every
    line starts with digits and a colon (``openseg_classes.py``: ``invalid_class_id`` lines skipped,
    synonyms split as FC-CLIP splits them, no duplicate check, as the official files repeat words).

    Raises:
        InputError: missing, not a regular file (a folder, a pipe), over 4 MB, not UTF-8 text,
            or a bad class list.
    """
    path = Path(path)
    try:
        st = path.stat()
    except (OSError, ValueError):
        raise InputError(f"class file not found: {path}") from None
    import stat as stat_mod

    if not stat_mod.S_ISREG(st.st_mode):  # a pipe or a device would block or never end
        raise InputError(f"class file {path} is not a regular file")
    if st.st_size > MAX_CLASS_FILE_BYTES:
        raise InputError(f"class file {path} is {st.st_size / 1e6:.1f} MB: a class list is text of a few kB "
                         "(is it the right file?)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"class file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                         f"{exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise InputError(f"cannot read class file {path}: {exc.strerror or exc}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"class file {path} lists no class: one class a line, synonyms after commas")
    if all(re.match(r"^\d+:", line) for line in lines):
        return id_name_vocabulary(lines)
    try:
        return parse_classes("\n".join(lines) + "\n", check=check)
    except InputError as exc:
        raise InputError(f"class file {path}: {exc}") from None


def id_name_vocabulary(lines: Sequence[str], drop_first: bool = False) -> Vocabulary:
    """FC-CLIP's ``idx:syn1,syn2,...`` class lines (``openseg_classes.py``) as a vocabulary whose
    display names are the first synonyms: ``invalid_class_id`` lines skipped, each name split as
    ``prepare_class_names_from_metadata`` does (``", "`` -> ``","``, then split on ``","``; no
    other stripping).

    Raises:
        InputError: a line without ``:``.
    """
    rows: list[list[str]] = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        if ":" not in line:
            raise InputError(f"line {n + 1}: expected 'id:name1,name2,...', got {line!r}")
        _, name = line.split(":", 1)
        if name == "invalid_class_id":
            continue
        rows.append(name.replace(", ", ",").split(","))
    if drop_first:
        rows = rows[1:]
    if not rows:
        raise InputError("the class list is empty")
    return Vocabulary(tuple(r[0] for r in rows), tuple(tuple(r) for r in rows))


def classes_argument(value: str) -> Vocabulary:
    """The ``--classes`` value of the command line: ``@FILE`` reads the class file FILE
    (:func:`read_classes_file`), anything else is a class list (:func:`parse_classes`).

    Raises:
        InputError: see :func:`parse_classes` and :func:`read_classes_file`.
    """
    value = value.lstrip(BOM)
    if value.startswith("@") and len(value) > 1:
        return read_classes_file(Path(value[1:]).expanduser())
    return parse_classes(value)


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
    text = Path(path).read_text(encoding="utf-8-sig")
    rows = [[w.strip() for w in line.split(sep)] for line in text.splitlines() if line.strip()]
    return parse_classes(rows, check=False)


def packaged_class_file(family: str, name: str) -> Path:
    """Path of a class file shipped with ovss: ``ovss/classnames/<family>/<name>``."""
    path = Path(str(resources.files("ovss") / "classnames" / family / name))
    if not path.is_file():
        raise InputError(f"no packaged class file {family}/{name}")
    return path
