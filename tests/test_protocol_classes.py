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

from ovss.protocols import get_protocol, protocol_datasets
from ovss.vocabulary import packaged_class_file, read_class_file

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


def _clip_family_cases() -> list[tuple[str, str]]:
    import ovss.methods.proxyclip  # noqa: F401  (registers its table)

    return [(m, d) for m in ("sclip", "clearclip", "naclip", "maskclip", "vanilla", "proxyclip")
            for d in protocol_datasets(m) if d in DATASETS]


@pytest.mark.parametrize("method,dataset", _clip_family_cases())
def test_clip_family_class_files(method: str, dataset: str) -> None:
    p = get_protocol(method, dataset)
    vocab = read_class_file(packaged_class_file(p.class_family, p.class_file), p.class_sep)
    _check([list(q) for q in vocab.queries], dataset)


def test_fc_clip_zsseg_zegformer_pnp_clip_diy_class_lists() -> None:
    from ovss.methods import clip_diy, fc_clip, pnp_ovss, zegformer, zsseg

    for d in fc_clip.PROTOCOLS:
        if d in DATASETS:
            _check([list(q) for q in fc_clip.dataset_vocabulary(d).queries], d)
    for d, proto in zsseg.PROTOCOLS.items():
        if d in DATASETS:
            _check([[n] for n in zsseg.protocol_class_names(proto)], d)
    for d, proto in zegformer.PROTOCOLS.items():
        names = packaged_class_file(*proto.class_file.split("/")).read_text().splitlines()
        _check([[n] for n in names if n.strip()], d)
    for d, names in clip_diy.DATASET_CLASSES.items():
        _check([[n] for n in names], d)
    assert set(pnp_ovss.PROTOCOLS) <= set(DATASETS)
