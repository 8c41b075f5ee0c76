"""Real-world files: lenient reading with counts, gold types the model lacks, the detected scheme and why."""

from __future__ import annotations

import json

import pytest

from earlytag import Tagger
from earlytag.data import schemes
from earlytag.data.datasets import load_dataset, map_labels, parse_label_map
from earlytag.data.readers import ReadReport, read_conll, read_conllu
from earlytag.errors import DataError

from .conftest import tiny_model
from .test_cli import run

BROKEN = "EU\tB-ORG\nrejects\tO\n\tO\nGerman\tB-MISC\n\nPeter\tB-PER\n   \tO\nBlackburn\tI-PER\n\nOK\tO\n"


def test_a_bad_token_line_fails_with_a_way_forward(tmp_path):
    src = tmp_path / "a.conll"
    src.write_text(BROKEN)
    with pytest.raises(DataError) as info:
        read_conll(src)
    assert "a.conll:3: empty token" in str(info.value) and "--on-error skip" in str(info.value)


def test_skip_drops_sentences_and_repair_drops_lines(tmp_path):
    src = tmp_path / "a.conll"
    src.write_text(BROKEN)
    report = ReadReport()
    sents = read_conll(src, on_error="skip", report=report)
    assert [s.tokens for s in sents] == [["OK"]]  # lines 3 and 7 (empty, spaces only) spoil their sentences
    assert report.skipped_sentences == 2 and report.repaired_lines == 0
    report = ReadReport()
    sents = read_conll(src, on_error="repair", report=report)
    assert [s.tokens for s in sents] == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["OK"]]
    assert report.repaired_lines == 2 and "a.conll:3: empty token" in report.describe()
    conllu = tmp_path / "b.conllu"
    conllu.write_text("1\tHi\thi\tINTJ\t_\t_\t0\troot\t_\t_\n2\t\t_\tPUNCT\t_\t_\t1\tpunct\t_\t_\n\n"
                      "1\tOk\tok\tINTJ\t_\t_\t0\troot\t_\t_\n\n")
    report = ReadReport()
    assert [s.tokens for s in read_conllu(conllu, on_error="skip", report=report)] == [["Ok"]]
    assert report.skipped_sentences == 1


def test_skip_counts_exactly(tmp_path):
    src = tmp_path / "a.conll"
    src.write_text("A\tO\n\tO\n\nB\tO\nC\tO\n\nD\tO\nE\tO\tx\n")  # sentences 1 and 3 are bad
    report = ReadReport()
    assert [s.tokens for s in read_conll(src, on_error="skip", report=report)] == [["B", "C"]]
    assert report.skipped_sentences == 2 and report.repaired_lines == 0


def test_iob1_without_b_tags_is_detected_and_explained():
    scheme, why = schemes.explain_scheme([["I-PER", "I-PER", "O", "I-LOC"], ["O", "I-ORG"]])
    assert scheme == "iob1" and "no B- tag" in why and "--scheme iob2" in why
    scheme, why = schemes.explain_scheme([["B-PER", "I-PER", "O", "B-LOC"]])
    assert scheme == "iob2" and "--scheme iob1" in why


def test_label_map_and_types():
    assert parse_label_map("MISC=O, ORGANIZATION=ORG") == {"MISC": "O", "ORGANIZATION": "ORG"}
    with pytest.raises(DataError, match="'MISC' is not FROM=TO"):
        parse_label_map("MISC")
    from earlytag.data.types import Sentence

    sents = [Sentence(["a", "b", "c", "d"], ["B-ORGANIZATION", "I-ORGANIZATION", "B-MISC", "B-DATE"])]
    changed = map_labels(sents, "ner", {"ORGANIZATION": "ORG", "MISC": "O"}, ["ORG", "PER", "LOC"])
    assert sents[0].tags == ["B-ORG", "I-ORG", "O", "O"]
    assert changed == {"ORGANIZATION": 2, "MISC": 1, "DATE": 1}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("files") / "model"
    Tagger(tiny_model("bert", labels=("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")),
           tokenizer).save_pretrained(path)
    return path


def test_evaluate_warns_about_types_the_model_lacks_and_scores_the_shared_ones(model_dir, tmp_path, capsys):
    data = tmp_path / "gold.conll"
    data.write_text("Paris\tB-LOC\nis\tO\nGerman\tB-MISC\n\nAngela\tB-PER\nMerkel\tI-PER\n\n")
    code, out, err = run(capsys, "evaluate", model_dir, data, "--json", "-")
    assert code == 0
    assert "gold types the model does not predict" in err and "MISC (1 tags)" in err
    assert "scheme iob2 (detected" in out
    result = json.loads(out[out.index('{\n  "'):])
    assert result["warnings"] and result["scheme"].startswith("iob2")
    code, out, err = run(capsys, "evaluate", model_dir, data, "--label-map", "MISC=O", "--json", "-")
    assert "does not predict" not in err and "gold tags rewritten: MISC: 1" in err
    code, out, err = run(capsys, "evaluate", model_dir, data, "--types", "PER,LOC", "--json", "-")
    assert code == 0 and "MISC" not in json.loads(out[out.index('{\n  "'):])["per_type"]


def test_evaluate_and_train_read_leniently_when_asked(model_dir, tmp_path, capsys):
    data = tmp_path / "gold.conll"
    data.write_text(BROKEN)
    code, _, err = run(capsys, "evaluate", model_dir, data)
    assert code == 2 and "--on-error" in err
    code, out, err = run(capsys, "evaluate", model_dir, data, "--on-error", "repair")
    assert code == 0 and "repaired 2 line(s)" in err


def test_predict_keeps_its_place_for_unreadable_documents(model_dir, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "Paris"}\n{"text": \n{"text": "a \\ud800 b"}\n{"text": "Berlin"}\n', encoding="utf-8")
    code, _, err = run(capsys, "predict", model_dir, src)
    assert code == 2 and "in.jsonl:2: invalid JSON" in err and "--on-error skip" in err
    code, out, err = run(capsys, "predict", model_dir, src, "--on-error", "skip")
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["index"] for d in docs] == [0, 1, 2, 3]
    assert "error" in docs[1] and "invalid JSON" in docs[1]["error"] and "lone surrogate" in docs[2]["error"]
    assert docs[3]["text"] == "Berlin"
    code, out, err = run(capsys, "predict", model_dir, src, "--on-error", "repair")
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs[2]["text"] == "a \ufffd b" and [t["text"] for t in docs[2]["tokens"]][0] == "a"
    assert '"errors": 1' in err


def test_load_dataset_reports_what_it_dropped(tmp_path):
    src = tmp_path / "a.conll"
    src.write_text(BROKEN)
    data = load_dataset(src, "ner", on_error="skip")
    assert data.report.skipped_sentences >= 1 and "skipped" in data.report.describe()
    assert data.scheme_note.startswith("iob2 (detected")


def test_evaluate_limit_scores_the_first_sentences_as_a_file_of_them_alone(model_dir, tmp_path, capsys):
    whole = tmp_path / "gold.conll"
    whole.write_text("Paris\tB-LOC\nis\tO\nbig\tO\n\nAngela\tB-PER\nMerkel\tI-PER\n\n"
                     "Berlin\tB-LOC\nis\tO\n\nACME\tB-ORG\nwins\tO\n\n")
    first = tmp_path / "first.conll"
    first.write_text("Paris\tB-LOC\nis\tO\nbig\tO\n\nAngela\tB-PER\nMerkel\tI-PER\n\n")
    tagger = Tagger.from_pretrained(model_dir)
    limited = tagger.evaluate(whole, limit=2)
    alone = tagger.evaluate(first)
    assert limited["sentences"] == 2 and limited["tokens"] == 5 and limited["limit"] == 2
    for key in ("f1", "precision", "recall", "accuracy", "flops_speedup"):
        assert limited[key] == alone[key], key
    everything = tagger.evaluate(whole)
    assert everything["sentences"] == 4 and everything["limit"] is None
    code, out, _ = run(capsys, "evaluate", model_dir, whole, "--limit", "3", "--exit", "token", "--threshold", "0.2")
    assert code == 0 and "(the first 3 sentences (--limit), 7 words)" in out
    assert "\nexit: token τ=0.2 k=2" in out  # the setting as the tables name it, not a dict
    code, _, err = run(capsys, "evaluate", model_dir, whole, "--limit", "0")
    assert code == 2 and "limit" in err and "at least 1" in err
