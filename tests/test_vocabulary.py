"""Class lists: parsing, synonyms, background handling, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovss.errors import InputError
from ovss.vocabulary import Vocabulary, classes_argument, packaged_class_file, parse_classes, read_class_file


def test_comma_separated_string():
    v = parse_classes("car, road ,tree")
    assert v.names == ("car", "road", "tree")
    assert v.query_words == ["car", "road", "tree"] and v.query_index == [0, 1, 2]
    assert v.background is None


def test_file_with_synonyms(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("person, man, woman\n\ncar\ntv monitor; television\n")
    v = parse_classes(f)  # a Path: a file asked for explicitly
    assert v.names == ("person", "car", "tv monitor")
    assert v.query_words == ["person", "man", "woman", "car", "tv monitor", "television"]
    assert v.query_index == [0, 0, 0, 1, 2, 2]
    assert classes_argument(f"@{f}") == v  # --classes @FILE
    assert parse_classes(f.read_text()) == v  # multi-line text: same format


def test_sequence_with_synonym_groups():
    v = parse_classes(["cat", ("sofa", "couch")])
    assert v.names == ("cat", "sofa") and v.query_index == [0, 1, 1]


@pytest.mark.parametrize("bad,msg", [
    ("", "empty"), (" , ", "empty"), ([], "empty"), ("cat, cat", "duplicate"), ("Cat, cat ", "duplicate"),
    (["cat", ("dog", "cat")], "duplicate"), ("cat,,dog", "empty name"),
])
def test_bad_class_lists(bad, msg):
    with pytest.raises(InputError, match=msg):
        parse_classes(bad)


def test_missing_class_file():
    with pytest.raises(InputError, match="not found"):
        parse_classes(Path("no_such_file.txt"))
    with pytest.raises(InputError, match="looks like a file name"):  # text is never opened as a file
        parse_classes("no_such_file.txt")


def test_background_prepended_and_replaced():
    v = parse_classes("cat, dog").with_background(["sky", "wall"])
    assert v.names == ("background", "cat", "dog") and v.background == 0
    assert v.query_words == ["sky", "wall", "cat", "dog"] and v.query_index == [0, 0, 1, 2]
    w = v.with_background(None)
    assert w.queries[0] == ("background",) and w.names == v.names
    with pytest.raises(InputError, match="also class names"):
        parse_classes("cat, sky").with_background(["sky"])


def test_official_class_files_read_like_get_cls_idx():
    v = read_class_file(packaged_class_file("sclip_naclip", "cls_voc21.txt"), ", ")
    assert len(v) == 21 and len(v.query_words) == 56 and v.queries[0][0] == "sky"
    p = read_class_file(packaged_class_file("proxyclip", "cls_ade20k847.txt"), "; ")
    assert len(p) == 847  # names there contain commas: the separator matters
    assert isinstance(v, Vocabulary)
