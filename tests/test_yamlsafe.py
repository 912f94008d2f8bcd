"""yamlsafe's loader (libyaml with its own tag resolver) reads YAML as PyYAML's safe loader does."""

from __future__ import annotations

import pytest
import yaml

from reconciler.yamlsafe import load_documents

DOCUMENTS = {
    "scalars": "a: 1\nb: -0x1F\nc: 0o17\nd: 1_000\ne: 1.5\nf: -.inf\ng: 6.02e+23\nh: true\ni: No\nj: ~\nk: null\n"
    "l: ''\nm: '1'\nn: \"true\"\no: plain text\np: 2026-12-01x\nq: .5\nr: +12\ns: 0b101\n",
    "collections": "a: [1, [2, [3]], {b: c}]\nd:\n  - e: f\n    g: [h]\n  - []\n  - {}\ni: {j: {k: {l: [m, n]}}}\n",
    "anchors and merge keys": "base: &base {x: 1, y: [2]}\ncopy: *base\nmerged:\n  <<: *base\n  y: 3\n"
    "list: &l [a, b]\nagain: *l\n",
    "several documents": "a: 1\n---\n- 2\n- 3\n---\nb: {c: 4}\n",
    "block scalars": "a: |\n  line one\n  line two\nb: >\n  folded\n  text\nc: !!str 5\nd: !!int '7'\n",
}


@pytest.mark.parametrize("text", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_load_documents_reads_what_the_safe_loader_reads(text: str) -> None:
    """Every implicit tag (ints in every base, floats, bools, nulls), collections, anchors, merge keys and
    explicit tags come out as ``yaml.safe_load_all`` makes them."""
    assert [data for data, _lines, _line in load_documents(text)] == list(yaml.safe_load_all(text))
