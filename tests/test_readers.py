"""Readers: every format, and every malformed case names its file and line."""

from __future__ import annotations

import json

import pytest

from earlytag.data.datasets import load_dataset
from earlytag.data.readers import read_conll, read_conllu, read_file, read_jsonl, read_uner
from earlytag.errors import DataError


def write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def assert_error(fn, path, line, fragment):
    with pytest.raises(DataError) as info:
        fn()
    err = info.value
    assert err.path == str(path)
    assert err.line == line
    assert fragment in str(err)
    assert str(err).startswith(f"{path}:{line}:" if line else f"{path}:")


# ----------------------------------------------------------------------------- CoNLL


def test_conll_space_separated_with_docstart(tmp_path):
    path = write(tmp_path, "a.conll", "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    sents = read_conll(path)
    assert [s.tokens for s in sents] == [["EU", "rejects"], ["Peter"]]
    assert [s.tags for s in sents] == [["B-ORG", "O"], ["B-PER"]]
    assert sents[0].lines == [3, 4]


def test_conll_tab_separated_configurable_columns(tmp_path):
    path = write(tmp_path, "a.tsv", "1\tNew York\tNNP\tB-LOC\n2\tis\tVBZ\tO\n")
    sents = read_conll(path, token_col=1, tag_col=3)
    assert sents[0].tokens == ["New York", "is"]
    assert sents[0].tags == ["B-LOC", "O"]


def test_conll_crlf_and_bom(tmp_path):
    path = write(tmp_path, "a.conll", b"\xef\xbb\xbfHi O\r\nthere O\r\n")
    assert read_conll(path)[0].tokens == ["Hi", "there"]


def test_conll_wrong_column_count(tmp_path):
    path = write(tmp_path, "a.conll", "EU NNP B-ORG\nrejects B-VP\n")
    assert_error(lambda: read_conll(path), path, 2, "expected 3 columns")


def test_conll_single_column(tmp_path):
    path = write(tmp_path, "a.conll", "EU\nrejects\n")
    assert_error(lambda: read_conll(path), path, 1, "token column and a tag column")


def test_conll_tag_column_out_of_range(tmp_path):
    path = write(tmp_path, "a.conll", "EU B-ORG\n")
    assert_error(lambda: read_conll(path, tag_col=5), path, 1, "tag column 5 does not exist")


def test_empty_file(tmp_path):
    path = write(tmp_path, "a.conll", "\n\n")
    assert_error(lambda: read_conll(path), path, None, "no sentences")


def test_bad_utf8_names_line(tmp_path):
    path = write(tmp_path, "a.conll", b"ok O\nbad\xff\xfe O\n")
    assert_error(lambda: read_conll(path), path, 2, "not valid UTF-8")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.conll"
    assert_error(lambda: read_conll(path), path, None, "no such file")


# ----------------------------------------------------------------------------- CoNLL-U


CONLLU = """# sent_id = s1
# text = Don't go.
1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t3:conj\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

"""


def test_conllu_skips_ranges_and_empty_nodes_keeps_spacing(tmp_path):
    path = write(tmp_path, "a.conllu", CONLLU)
    (sent,) = read_conllu(path)
    assert sent.tokens == ["Do", "n't", "go", "."]
    assert sent.tags == ["AUX", "PART", "VERB", "PUNCT"]
    assert sent.id == "s1"
    assert sent.spaces == [True, True, False, True]
    assert sent.text == "Do n't go."
    assert read_conllu(path, "xpos")[0].tags == ["VBP", "RB", "VB", "."]


def test_conllu_wrong_columns(tmp_path):
    path = write(tmp_path, "a.conllu", "# c\n1\tDo\tdo\tAUX\n")
    assert_error(lambda: read_conllu(path), path, 2, "10 tab-separated columns")


def test_conllu_bad_id(tmp_path):
    path = write(tmp_path, "a.conllu", "x\tDo\tdo\tAUX\tVB\t_\t0\troot\t_\t_\n")
    assert_error(lambda: read_conllu(path), path, 1, "word ID")


def test_conllu_real_file(shared_data):
    sents = read_conllu(shared_data / "ud_english_ewt" / "en_ewt-ud-dev.conllu")
    assert len(sents) == 2001
    assert sum(len(s) for s in sents) == 25147


# ----------------------------------------------------------------------------- UNER iob2


def test_uner_comments_columns_and_text(tmp_path):
    path = write(tmp_path, "a.iob2", "# sent_id = x\n# text = Al-Zaman : hi\n1\tAl\tB-ORG\t-\ts\n2\t-\tI-ORG\t-\ts\n"
                                     "3\tZaman\tI-ORG\t-\ts\n4\t:\tO\t-\t-\n5\thi\tO\t-\t-\n\n")
    (sent,) = read_uner(path)
    assert sent.tokens == ["Al", "-", "Zaman", ":", "hi"]
    assert sent.tags == ["B-ORG", "I-ORG", "I-ORG", "O", "O"]
    assert sent.text == "Al-Zaman : hi"
    assert sent.offsets[2] == (3, 8)


def test_uner_real_files(shared_data):
    train = read_uner(shared_data / "uner_english_ewt" / "en_ewt-ud-train.normalized-from-early.iob2")
    dev = read_uner(shared_data / "uner_english_ewt" / "en_ewt-ud-dev.iob2")
    assert (len(train), len(dev)) == (12543, 2001)
    assert sum(len(s) for s in dev) == 25149


# ----------------------------------------------------------------------------- JSONL


def test_jsonl(tmp_path):
    path = write(tmp_path, "a.jsonl", json.dumps({"tokens": ["a", "b"], "tags": ["O", "B-X"]}) + "\n\n")
    (sent,) = read_jsonl(path)
    assert sent.tokens == ["a", "b"] and sent.tags == ["O", "B-X"]


@pytest.mark.parametrize("line, fragment", [
    ('{"tokens": ["a"], "tags": ["O"]', "invalid JSON"),
    ('["a"]', "expected a JSON object"),
    ('{"tokens": [], "tags": []}', "'tokens' must be a non-empty list"),
    ('{"tokens": ["a", 3], "tags": ["O", "O"]}', "'tokens' must be a non-empty list"),
    ('{"tokens": ["a", "b"]}', "missing field 'tags'"),
    ('{"tokens": ["a", "b"], "tags": ["O"]}', "'tokens' has 2 items but 'tags' has 1"),
    ('{"tokens": ["a"], "tags": ["B X"]}', "empty or blank tag"),
])
def test_jsonl_malformed(tmp_path, line, fragment):
    path = write(tmp_path, "a.jsonl", '{"tokens": ["ok"], "tags": ["O"]}\n' + line + "\n")
    assert_error(lambda: read_jsonl(path), path, 2, fragment)


def test_read_file_by_extension(tmp_path):
    assert read_file(write(tmp_path, "x.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n'))[0].tokens == ["a"]
    assert read_file(write(tmp_path, "x.txt", "a O\n"))[0].tags == ["O"]
    with pytest.raises(DataError, match="unknown format"):
        read_file(tmp_path / "x.txt", "xml")


# ----------------------------------------------------------------------------- tag validation in data sets


def test_unknown_prefix_names_line(tmp_path):
    path = write(tmp_path, "a.conll", "EU B-ORG\nsays X-PER\n")
    assert_error(lambda: load_dataset(path, "ner"), path, 2, "prefix 'X'")


def test_i_after_o_strict_iob2(tmp_path):
    path = write(tmp_path, "a.conll", "EU B-ORG\n\nsays O\nPeter I-PER\n")
    assert_error(lambda: load_dataset(path, "ner", scheme="iob2", strict=True), path, 4, "I-PER after O")
    # lenient (default): the I- starts a chunk
    assert load_dataset(path, "ner", scheme="iob2").sentences[1].tags == ["O", "B-PER"]


def test_scheme_detection_and_normalisation(tmp_path):
    path = write(tmp_path, "a.conll", "New B-LOC\nYork E-LOC\nis O\nPeter S-PER\n")
    data = load_dataset(path, "ner")
    assert data.scheme == "iobes"
    assert data.sentences[0].tags == ["B-LOC", "I-LOC", "O", "B-PER"]
    path = write(tmp_path, "b.conll", "New I-LOC\nYork I-LOC\nBerlin B-LOC\n")
    data = load_dataset(path, "ner")
    assert data.scheme == "iob1"
    assert data.sentences[0].tags == ["B-LOC", "I-LOC", "B-LOC"]


def test_strict_iobes_unclosed_chunk(tmp_path):
    path = write(tmp_path, "a.conll", "New B-LOC\nYork O\n")
    assert_error(lambda: load_dataset(path, "ner", scheme="iobes", strict=True), path, 2, "not closed")


def test_cws_from_uner_chinese(shared_data):
    data = load_dataset(shared_data / "uner_chinese_gsdsimp" / "zh_gsdsimp-ud-dev.iob2", "cws")
    first = data.sentences[0]
    assert first.tokens[:4] == ["同", "样", "，", "施"]
    assert first.tags[:4] == ["B", "E", "S", "B"]
    assert sum(len(s) for s in data.sentences) == 20000  # characters, as PROVENANCE.txt says
