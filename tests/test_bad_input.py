"""Bad input gets one clear line naming the file, line or field: broken model directories, odd text, deep JSON."""

from __future__ import annotations

import json
import shutil
import tracemalloc

import pytest

from earlytag import Tagger
from earlytag.data.readers import iter_lines, read_conllu, read_jsonl
from earlytag.errors import DataError, EarlytagError

from .conftest import tiny_model
from .test_cli import run, shown

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("bad") / "model"
    Tagger(tiny_model("bert", labels=LABELS), tokenizer).save_pretrained(path)
    return path


def broken_copy(saved, tmp_path, edit=None, remove=()):
    copy = tmp_path / "model"
    shutil.copytree(saved, copy)
    for name in remove:
        (copy / name).unlink()
    if edit is not None:
        config = json.loads((copy / "config.json").read_text())
        edit(config)
        (copy / "config.json").write_text(json.dumps(config))
    return copy


def _set(path, value):
    def edit(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, remove, fragment", [
    (None, ("tokenizer.json", "tokenizer_config.json"), "no tokenizer files"),
    (_set(["earlytag"], [1]), (), "earlytag.earlytag: must be a JSON object"),
    (_set(["earlytag", "max_length"], "512"), (), "earlytag.max_length: must be an integer, got '512'"),
    (_set(["earlytag", "labels"], "O"), (), "earlytag.labels: must be a list of non-empty strings"),
    (_set(["earlytag", "window_overlap"], 10 ** 6), (), "earlytag.window_overlap: must be between 0 and"),
    (_set(["hidden_size"], 64), (), "has shape (32,) but config.json describes (64,)"),
], ids=["no-tokenizer", "earlytag-list", "max-length-string", "labels-string", "overlap", "hidden-size"])
def test_broken_model_directories_give_one_line(saved, tmp_path, capsys, edit, remove, fragment):
    model = broken_copy(saved, tmp_path, edit, remove)
    with pytest.raises(EarlytagError) as info:
        Tagger.from_pretrained(model)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    code, _, err = run(capsys, "predict", model, "-")
    assert code == 2 and len(shown(err)) == 1 and fragment in err


def test_a_tokenizer_of_another_model_is_refused(saved, tmp_path, capsys):
    from transformers import BertTokenizerFast

    model = broken_copy(saved, tmp_path, remove=("tokenizer.json", "tokenizer_config.json"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "paris", "angela"]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(model)
    code, _, err = run(capsys, "predict", model, "-")
    assert code == 2 and "entries but the encoder's embedding table 30522 rows: the tokenizer does not belong" in err
    assert len(shown(err)) == 1


def test_lone_surrogate_in_predict_names_file_and_line(saved, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n{"text": "a \\ud800 b"}\n', encoding="utf-8")
    code, _, err = run(capsys, "predict", saved, src, "--output", tmp_path / "out.jsonl")
    assert code == 2
    assert "in.jsonl:2: character 2 is a lone surrogate (U+D800)" in err
    with pytest.raises(DataError, match="texts\\[0\\]: character 2"):
        Tagger.from_pretrained(saved).to_sentence("a \ud800 b", "texts[0]")


def test_deeply_nested_json_is_a_data_error(saved, tmp_path, capsys):
    src = tmp_path / "deep.jsonl"
    src.write_text('{"text": "ok"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    code, _, err = run(capsys, "predict", saved, src, "--output", tmp_path / "o.jsonl")
    assert code == 2 and "deep.jsonl:2: JSON nested too deeply" in err
    src.write_text('{"tokens": ["a"], "tags": ["O"]}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match="deep.jsonl:2: JSON nested too deeply"):
        read_jsonl(src)


def test_readers_reject_empty_words_and_non_boolean_spaces(tmp_path):
    conllu = tmp_path / "a.conllu"
    conllu.write_text("1\tHello\thello\tINTJ\t_\t_\t0\troot\t_\t_\n2\t\t_\tPUNCT\t_\t_\t1\tpunct\t_\t_\n\n")
    with pytest.raises(DataError, match="a.conllu:2: empty word form"):
        read_conllu(conllu)
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O", "O"], "spaces": ["yes", 0]}) + "\n")
    with pytest.raises(DataError, match="a.jsonl:1: field 'spaces' must be a list of booleans"):
        read_jsonl(jsonl)


def test_reading_streams_the_file(tmp_path):
    """The first line of a big file costs memory for one line, not for the file (predict streams its input)."""
    big = tmp_path / "big.txt"
    line = ("word " * 20 + "\n").encode()
    with open(big, "wb") as f:
        for _ in range(200):
            f.write(line * 2500)  # 50 MB
    tracemalloc.start()
    lines = iter_lines(big)
    number, first = next(lines)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    lines.close()
    assert number == 1 and first.startswith("word")
    assert peak < 2_000_000  # bytes: the old reader held the whole 50 MB


def test_absurd_window_overlap_cannot_make_windows_crawl(tokenizer):
    from earlytag.data.batching import Featurizer

    feat = Featurizer(tokenizer, max_length=24, overlap=1000)
    windows = feat.windows([[f"w{i}" for i in range(400)]])
    assert len(windows) < 200  # each window moves on by at least half a window (one word each: ~400 windows)
    covered = set()
    for w in windows:
        covered.update(range(w.start, w.start + w.num_words))
    assert covered == set(range(400))


def test_cli_one_line_for_absurd_exit_settings(saved, capsys):
    code, _, err = run(capsys, "predict", saved, "-", "--exit", "token", "--threshold", "0.1", "--window",
                       str(2 ** 62))
    assert code == 2 and "exit.window" in err and len(shown(err)) == 1
