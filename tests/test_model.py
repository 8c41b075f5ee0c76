"""One shared test class every model variant passes (as flair's tests do): train a few steps, predict,
save/load round trip, static depth, long documents, loading safety."""

from __future__ import annotations

import json

import pytest
import torch

from earlytag import Tagger
from earlytag.engine import ExitConfig
from earlytag.errors import EarlytagError
from earlytag.train.trainer import TrainConfig, train

from .conftest import tiny_model

EXITS = [
    ExitConfig(),
    ExitConfig(policy="static", layer=2),
    ExitConfig(policy="token", threshold=0.3, window=1),
    ExitConfig(policy="sentence", threshold=0.3),
    ExitConfig(policy="patience", patience=1),
]


class BaseTaggerTest:
    family: str
    task: str = "ner"
    train_spec: str = "uner-en-ewt:train"
    dev_spec: str = "uner-en-ewt:dev"
    text: str = "Angela Merkel visited Paris on Tuesday."
    options: dict = {}  # more TrainConfig settings (the head)

    @pytest.fixture(scope="class")
    @classmethod
    def trained(cls, tiny_encoder_dirs, shared_data, tmp_path_factory):
        out = tmp_path_factory.mktemp(f"model-{cls.family}-{cls.task}")
        log = train(TrainConfig(train=cls.train_spec, dev=cls.dev_spec, output=str(out), task=cls.task,
                                encoder=str(tiny_encoder_dirs[cls.family]), epochs=2, freeze_epochs=1,
                                batch_size=16, train_limit=96, dev_limit=48, lr=1e-3, progress=False,
                                data_dir=str(shared_data), **cls.options))
        return out, log

    def test_training_log_and_files(self, trained):
        out, log = trained
        assert [e["epoch"] for e in log["epochs"]] == [1, 2]
        assert log["epochs"][0]["encoder_frozen"] and not log["epochs"][1]["encoder_frozen"]
        assert all(len(e["dev_per_layer"]) == 3 for e in log["epochs"])
        for name in ("config.json", "model.safetensors", "tokenizer.json", "training_log.json"):
            assert (out / name).is_file()
        assert not list(out.parent.glob(f".{out.name}.*"))  # no temporary directories left

    def test_predict_document(self, trained):
        tagger = Tagger.from_pretrained(trained[0])
        doc = tagger(self.text)
        assert doc["text"] == self.text
        assert len(doc["tokens"]) > 0
        for tok in doc["tokens"]:
            assert self.text[tok["start"]:tok["end"]] == tok["text"]
            assert 1 <= tok["exit_layer"] <= tagger.num_layers
            assert 0.0 <= tok["score"] <= 1.0
            assert tok["tag"] in tagger.labels or tagger.config.label_scheme == "iobes"
        for span in doc["spans"]:
            assert self.text[span["start"]:span["end"]] == span["text"]

    def test_save_load_round_trip_identical(self, trained, tmp_path):
        tagger = Tagger.from_pretrained(trained[0])
        tagger.save_pretrained(tmp_path / "copy")
        again = Tagger.from_pretrained(tmp_path / "copy")
        texts = [self.text, "Another short one", "x"]
        for cfg in EXITS:
            assert list(tagger.pipe(texts, exit=cfg)) == list(again.pipe(texts, exit=cfg))

    def test_static_depth_uses_exactly_k_layers(self, trained):
        tagger = Tagger.from_pretrained(trained[0])
        calls = [0] * tagger.num_layers
        hooks = [p.attn_out.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
                 for i, p in enumerate(tagger.model.adapter.layers)]
        pred = tagger.predict_words([["a", "b"], ["c"]], {"policy": "static", "layer": 2})
        for h in hooks:
            h.remove()
        assert calls[:2] == [1, 1] and calls[2:] == [0] * (tagger.num_layers - 2)
        assert all(x == 2 for layers in pred.exit_layers for x in layers)

    def test_long_document_is_windowed_not_truncated(self, trained):
        tagger = Tagger.from_pretrained(trained[0])
        tagger.featurizer.__init__(tagger.tokenizer, max_length=24, overlap=4)
        words = [f"w{i}" for i in range(200)]
        windows = tagger.featurizer.windows([words])
        assert len(windows) > 5
        assert max(len(w) for w in windows) <= 24
        pred = tagger.predict_words([words])
        assert len(pred.tags[0]) == 200 and None not in pred.tags[0]
        # each word carries the prediction of the window where it is most central
        best = {}
        for wi, w in enumerate(windows):
            for j in range(w.num_words):
                margin = min(j, w.num_words - 1 - j)
                if margin > best.get(w.start + j, (-1, None))[0]:
                    best[w.start + j] = (margin, wi)
        alone = tagger.predict_words([words[windows[best[100][1]].start:][: windows[best[100][1]].num_words]])
        assert pred.tags[0][100] == alone.tags[0][100 - windows[best[100][1]].start]
        # statistics count each word once (the overlaps are computed twice: that shows in tokens, not words)
        assert pred.stats.words == 200 and pred.stats.sentences == 1
        assert sum(pred.stats.words_exited) == 200
        assert pred.stats.mean_exit_layer == pytest.approx(sum(pred.exit_layers[0]) / 200)
        assert pred.stats.tokens == sum(len(w) for w in windows)  # what the engine computed

    def test_evaluate_returns_the_documented_fields(self, trained, shared_data):
        tagger = Tagger.from_pretrained(trained[0])
        result = tagger.evaluate(self.dev_spec, exit={"policy": "token", "threshold": 0.2}, data_dir=shared_data,
                                 per_layer=True)
        for key in ("f1", "precision", "recall", "accuracy", "per_type", "per_layer", "sentences", "tokens",
                    "seconds", "exit", "flops_speedup", "mean_exit_layer", "inference_seconds"):
            assert key in result
        assert len(result["per_layer"]) == tagger.num_layers
        assert result["exit"]["policy"] == "token"

    def test_transformers_loads_the_fine_tuned_encoder(self, trained):
        from transformers import AutoModel

        tagger = Tagger.from_pretrained(trained[0])
        encoder = AutoModel.from_pretrained(trained[0])
        ours = tagger.model.encoder.state_dict()
        for name, tensor in encoder.state_dict().items():
            if name in ours:
                assert torch.equal(tensor, ours[name]), name


class TestBertTagger(BaseTaggerTest):
    family = "bert"


class TestMPNetTagger(BaseTaggerTest):
    family = "mpnet"


class TestCRFTagger(BaseTaggerTest):
    family = "bert"
    options = {"head": "crf"}

    def test_the_crf_is_saved_and_decodes(self, trained):
        tagger = Tagger.from_pretrained(trained[0])
        assert tagger.model.head.structured and tagger.config.head == "crf"
        assert tagger.model.head.transitions.abs().sum() > 0  # trained, not left at its zero start
        meanfield = Tagger.from_pretrained(trained[0], decode="meanfield", meanfield_iters=2)
        assert meanfield.model.head.decode_with == "meanfield" and meanfield.model.head.meanfield_iters == 2


class TestCRFPerLayerMPNet(BaseTaggerTest):
    family = "mpnet"
    options = {"head": "crf", "crf_transitions": "per-layer", "decode": "meanfield"}


class TestSlimTagger(BaseTaggerTest):
    """Stage 1 with structured slimming: the search ends early (a check every 2 steps) and training goes on with
    the slim model."""

    family = "mpnet"
    options = {"slim": "heads=0.5,ffn=0.5", "slim_check_every": 2, "slim_max_steps": 6}

    def test_the_saved_model_is_slim(self, trained):
        out, log = trained
        tagger = Tagger.from_pretrained(out)
        assert log["slim"]["ticket_step"] <= 6 and log["slim"]["checks"]
        assert log["slim"]["params_after"] < log["slim"]["params_before"]
        assert [len(h) for h in tagger.config.slim["heads"]] == [2, 2, 2]  # of 4
        assert tagger.config.slim["ffn"] == [32, 32, 32]  # of 64
        assert [p.ffn_in.out_features for p in tagger.model.adapter.layers] == [32, 32, 32]
        card = (out / "README.md").read_text(encoding="utf-8")
        assert "slim encoder" in card and "AutoModel.from_pretrained" not in card

    def test_transformers_loads_the_fine_tuned_encoder(self, trained):
        """transformers 5 has no per-layer head counts or FFN widths: it refuses the slim weights (loudly)."""
        from transformers import AutoModel

        with pytest.raises(Exception, match="size|shape"):
            AutoModel.from_pretrained(trained[0])


class TestPosTagger(BaseTaggerTest):
    family = "bert"
    task = "pos"
    train_spec = "ud-en-ewt:train"
    dev_spec = "ud-en-ewt:dev"


class TestSegmenter(BaseTaggerTest):
    family = "bert"
    task = "cws"
    train_spec = "uner-zh-gsdsimp:train"
    dev_spec = "ud-zh-gsdsimp:dev"
    text = "同样，施力的大小不同。"

    def test_predictions_turn_back_into_words(self, trained):
        doc = Tagger.from_pretrained(trained[0])(self.text)
        words = doc["words"]
        assert "".join(w["text"] for w in words) == self.text.replace(" ", "")
        assert all(self.text[w["start"]:w["end"]] == w["text"] for w in words)


def test_loading_never_executes_code(tmp_path, tokenizer):
    """A config that points at custom code (auto_map) is refused; the code never runs."""
    model_dir = tmp_path / "model"
    Tagger(tiny_model("bert"), tokenizer).save_pretrained(model_dir)
    marker = tmp_path / "executed"
    (model_dir / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n", encoding="utf-8")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    try:
        Tagger.from_pretrained(model_dir)
    except EarlytagError:
        pass
    assert not marker.exists()
    assert not list(model_dir.glob("*.pkl")) and not list(model_dir.glob("*.bin"))


def test_not_a_model_directory(tmp_path):
    with pytest.raises(EarlytagError, match="not an earlytag model directory"):
        Tagger.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(EarlytagError, match="invalid JSON"):
        Tagger.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    with pytest.raises(EarlytagError, match="not an earlytag model"):
        Tagger.from_pretrained(tmp_path)


def test_the_training_step_is_fused_adamw_and_moves_weights_as_adamw_does():
    """On the CPU (torch >= 2.4) the trainer's optimizer is torch's fused AdamW, the same update as the default
    multi-tensor AdamW with the trainer's groups (learning rates, weight decay), in one kernel per tensor."""
    from earlytag.train.trainer import _optimizer, fused_adamw_on

    assert fused_adamw_on(torch.device("cpu")) and fused_adamw_on(torch.device("cuda"))
    assert not fused_adamw_on(torch.device("meta"))
    cfg = TrainConfig(train="-", output="-", lr=1e-3, head_lr=1e-2, weight_decay=0.1)
    models = [tiny_model("bert", seed=3), tiny_model("bert", seed=3)]
    fused = _optimizer(models[0], cfg)
    assert fused.defaults["fused"] is True
    name_of = {id(p): n for n, p in models[0].named_parameters()}
    twin = dict(models[1].named_parameters())  # the trainer's own groups, on the second model's parameters
    plain = torch.optim.AdamW([{k: v for k, v in g.items() if k != "fused"}
                               | {"params": [twin[name_of[id(p)]] for p in g["params"]]}
                               for g in fused.param_groups], foreach=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (2, 7), generator=g)
    labels = torch.randint(0, 5, (2, 6), generator=g)
    before = models[0].encoder.encoder.layer[0].attention.self.query.weight.detach().clone()
    for _ in range(3):  # eval mode (no dropout): both models see the same function, gradients flow all the same
        for model, opt in zip(models, (fused, plain)):
            out = model(ids, torch.ones_like(ids), torch.arange(1, 7).expand(2, 6), labels=labels)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
    after = [dict(m.named_parameters()) for m in models]
    assert not torch.equal(after[0]["encoder.encoder.layer.0.attention.self.query.weight"], before)  # it trained
    for name, p in after[0].items():
        assert torch.allclose(p, after[1][name], atol=1e-6), name
