"""Ray Data path: a local Ray (2 CPUs, started by the test) tags a corpus of 10k sentences."""

from __future__ import annotations

import json

import pytest

from .conftest import need_module

ray = need_module("ray")

from earlytag import Tagger  # noqa: E402
from earlytag.cli import main  # noqa: E402
from earlytag.data.readers import read_uner  # noqa: E402

from .conftest import tiny_model  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("ray") / "model"
    Tagger(tiny_model("bert", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC")), tokenizer).save_pretrained(path)
    return path


def test_ray_tags_a_10k_sentence_corpus_in_order(local_ray, model_dir, shared_data, tmp_path, capsys):
    sentences = read_uner(shared_data / "uner_english_ewt" / "en_ewt-ud-train.normalized-from-early.iob2")[:10_000]
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for i, s in enumerate(sentences):
            f.write(json.dumps({"id": i, "text": s.text}) + "\n")
    out = tmp_path / "tagged.jsonl"
    code = main(["predict", str(model_dir), str(corpus), "--output", str(out), "--engine", "ray",
                 "--exit", "token", "--threshold", "0.3", "--batch-size", "64"])
    assert code == 0
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("tagged 10000 documents")][-1]
    summary = json.loads(line[line.index("({") + 1:-1])
    assert summary["documents"] == 10_000 and summary["engine"] == "ray"
    docs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [d["id"] for d in docs] == list(range(10_000))  # order preserved
    tagger = Tagger.from_pretrained(model_dir)
    for i in (0, 1234, 9999):
        direct = tagger(sentences[i].text, exit={"policy": "token", "threshold": 0.3})
        assert docs[i]["text"] == direct["text"]
        assert docs[i]["tokens"] == direct["tokens"] and docs[i]["spans"] == direct["spans"]
    layers = [t["exit_layer"] for d in docs for t in d["tokens"]]
    assert summary["words"] == len(layers)
    assert summary["mean_exit_layer"] == pytest.approx(sum(layers) / len(layers))  # what the actors computed
    assert not list(tmp_path.glob(".tagged.jsonl*"))


def test_ray_parquet_output(local_ray, model_dir, tmp_path):
    from earlytag.ray_tagging import tag_corpus

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Paris is big\n\nBerlin too\n", encoding="utf-8")
    summary = tag_corpus(str(model_dir), str(corpus), str(tmp_path / "out.parquet"))
    assert summary["documents"] == 2
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out.parquet")
    assert sorted(table.column("text").to_pylist()) == ["Berlin too", "Paris is big"]
    assert json.loads(table.column("tokens").to_pylist()[0])[0]["exit_layer"] >= 1
