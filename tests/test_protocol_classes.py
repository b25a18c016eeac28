"""Every method's official class list for a benchmark names the benchmark's classes in its label
order: the evaluation pairs channel i with label i, so a list that is shifted or reordered would
give wrong numbers silently (the runner only checks the count).

Names differ in spelling between code families ("aeroplane" / "airplane", "pottedplant" /
"potted plant", synonyms on one line), so a position matches when one of its names is close to
the benchmark's name; a shift by one position makes most positions fail.
"""

from __future__ import annotations

import difflib
import json
import re
from importlib import resources

import pytest

from ovss.registry import available_methods, method_class

DATASETS = json.loads((resources.files("ovss") / "data" / "dataset_classes.json").read_text())


def _norm(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def _close(names: list[str], target: str) -> bool:
    t = _norm(target)
    for n in names:
        n = _norm(n)
        if n == t or (min(len(n), len(t)) >= 3 and (n in t or t in n)):
            return True
        if difflib.SequenceMatcher(None, n, t).ratio() >= 0.75:
            return True
    return False


def _check(rows: list[list[str]], dataset: str) -> None:
    truth = DATASETS[dataset]
    assert len(rows) == len(truth), (dataset, len(rows), len(truth))
    hits = [_close(r, t) for r, t in zip(rows, truth)]
    shifted = [_close(r, t) for r, t in zip(rows[1:], truth)]
    assert sum(hits) >= 0.8 * len(truth), [(r, t) for r, t, h in zip(rows, truth, hits) if not h][:10]
    assert sum(hits) > sum(shifted)
    # two positions that each spell the other's name: swapped
    where = {_norm(t): j for j, t in enumerate(truth)}
    swapped = [(i, j) for i, r in enumerate(rows) if not hits[i] and truth[i] != "background"
               for j in {where.get(_norm(n), i) for n in r} - {i} if _close(rows[j], truth[i])]
    assert not swapped, swapped


def _cases() -> list[tuple[str, str]]:
    return [(m, d) for m in available_methods() for d in method_class(m).datasets() if d in DATASETS]


@pytest.mark.parametrize("method,dataset", _cases())
def test_protocol_class_lists(method: str, dataset: str) -> None:
    vocab = method_class(method).protocols.get(dataset).vocabulary()
    assert vocab is not None and vocab.official
    fg = [list(q) for i, q in enumerate(vocab.queries)]
    _check(fg, dataset)


def test_every_protocol_has_a_class_list_or_says_why() -> None:
    """Each official row of each method carries the class list its benchmark scores."""
    for m in available_methods():
        for d in method_class(m).datasets():
            if d in DATASETS:
                assert method_class(m).protocols.get(d).vocabulary() is not None, (m, d)
