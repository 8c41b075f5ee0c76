"""Precisions and backends: every policy in every precision, float32 exit decisions, ONNX Runtime equal to torch,
and on a real (briefly fine-tuned) all-MiniLM-L6-v2: bf16 agrees with fp32, int8 stays within 1 F1."""

from __future__ import annotations

import pytest
import torch

from earlytag import Tagger
from earlytag.engine import ExitConfig
from earlytag.engine.policies import head_scores
from earlytag.engine.runner import ExitPolicy
from earlytag.errors import ConfigError, EarlytagError
from earlytag.model import precision as precision_module

from .conftest import need_module, tiny_model
from .test_engine import SENTENCES

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
POLICY_SETTINGS = [ExitConfig(), ExitConfig("static", layer=2), ExitConfig("token", threshold=0.3, window=1),
                   ExitConfig("token", threshold=0.3, halted="frozen"), ExitConfig("token", threshold=0.3, kv="drop"),
                   ExitConfig("sentence", threshold=0.3), ExitConfig("patience", patience=1)]


def graph_nodes(graph):
    """Every node of an ONNX graph with the graph it sits in, the If branches' nodes included (the climb graph's
    layers after the first sit in nested branches)."""
    for node in graph.node:
        yield node, graph
        for attr in node.attribute:
            if attr.g.node:
                yield from graph_nodes(attr.g)


@pytest.fixture(autouse=True)
def fp16_arithmetic(monkeypatch):
    """These tests are about the engine's dtypes, not the host's arithmetic: torch runs float16 on any CPU (slowly,
    which is why earlytag refuses it where the CPU has no float16 arithmetic; that refusal is tested below with
    its own flags), so a host without AVX512-FP16 is made to look as if it had it."""
    flags = precision_module.cpu_flags()
    if flags and not flags & {"avx512_fp16", "amx_fp16"}:
        monkeypatch.setattr(precision_module, "cpu_flags", lambda: flags | {"avx512_fp16"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("precision") / "model"
    Tagger(tiny_model("bert", labels=LABELS, seed=3), tokenizer).save_pretrained(path)
    return path


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "int8", "int8-mixed"])
@pytest.mark.parametrize("cfg", POLICY_SETTINGS, ids=lambda c: c.describe())
def test_every_policy_runs_in_every_precision(model_dir, precision, cfg):
    tagger = Tagger.from_pretrained(model_dir, precision=precision)
    assert tagger.precision == precision
    for batch_size in (1, 3):
        docs = list(tagger.pipe(SENTENCES, exit=cfg, batch_size=batch_size))
        assert [len(d["tokens"]) for d in docs] == [len(s) for s in SENTENCES]
        for doc in docs:
            for tok in doc["tokens"]:
                assert 0.0 <= tok["score"] <= 1.0 and 1 <= tok["exit_layer"] <= tagger.num_layers


@pytest.fixture(scope="module")
def crf_dir(tmp_path_factory, tokenizer):
    from .test_crf import crf_model

    path = tmp_path_factory.mktemp("precision-crf") / "model"
    Tagger(crf_model(seed=3), tokenizer).save_pretrained(path)
    return path


@pytest.mark.parametrize("precision, backend", [("fp32", "torch"), ("bf16", "torch"), ("fp16", "torch"),
                                                ("int8", "torch"), ("fp32", "onnxruntime")])
def test_crf_head_runs_every_policy_in_every_precision(crf_dir, precision, backend, monkeypatch, tmp_path):
    """The CRF's transitions stay float32 whatever the encoder's precision; labels agree with fp32 torch."""
    if backend == "onnxruntime":
        need_module("onnxruntime")
        monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path))
    tagger = Tagger.from_pretrained(crf_dir, precision=precision, backend=backend)
    reference = Tagger.from_pretrained(crf_dir)
    assert tagger.model.head.transitions.dtype == torch.float32
    agree = total = 0
    for cfg in POLICY_SETTINGS:
        if backend == "onnxruntime" and cfg.kv == "drop":  # that backend runs kv=keep only
            continue
        docs = list(tagger.pipe(SENTENCES, exit=cfg, batch_size=3))
        ref = list(reference.pipe(SENTENCES, exit=cfg, batch_size=3))
        for doc, r in zip(docs, ref):
            assert len(doc["tokens"]) == len(r["tokens"])
            for tok, rt in zip(doc["tokens"], r["tokens"]):
                assert 0.0 <= tok["score"] <= 1.0 and 1 <= tok["exit_layer"] <= tagger.num_layers
                agree += tok["tag"] == rt["tag"]
                total += 1
    assert agree / total >= (1.0 if precision == "fp32" else 0.7)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int8", "int8-mixed"])
def test_exit_decisions_use_float32_uncertainty(model_dir, precision, monkeypatch):
    seen = []
    original = ExitPolicy.halt

    def spy(self, layer, unc, pred, active, word_mask, state):
        seen.append(unc.dtype)
        return original(self, layer, unc, pred, active, word_mask, state)

    monkeypatch.setattr(ExitPolicy, "halt", spy)
    tagger = Tagger.from_pretrained(model_dir, precision=precision)
    hidden = []
    hook = tagger.model.adapter.layers[0].ffn_norm.register_forward_hook(lambda m, a, out: hidden.append(out.dtype))
    tagger(SENTENCES[0], exit={"policy": "token", "threshold": 0.3})
    hook.remove()
    assert seen and set(seen) == {torch.float32}
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    assert hidden == [expected]  # the encoder really ran in that precision


def test_int8_mixed_keeps_the_ffn_output_float32(model_dir, tmp_path, monkeypatch):
    """torch: every Linear an Int8Linear but the FFN's output projection; ONNX Runtime: the graph's integer products
    are the same five per layer, the FFN output and the heads float32 MatMuls (found by their weights)."""
    mixed = Tagger.from_pretrained(model_dir, precision="int8-mixed")
    for parts in mixed.model.adapter.layers:
        assert all(isinstance(getattr(parts, r), precision_module.Int8Linear)
                   for r in ("query", "key", "value", "attn_out", "ffn_in"))
        assert type(parts.ffn_out) is torch.nn.Linear
    fp32 = Tagger.from_pretrained(model_dir)
    assert mixed.model.adapter.layers[0].ffn_out.weight.equal(fp32.model.adapter.layers[0].ffn_out.weight)
    need_module("onnxruntime")
    import onnx

    monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path / "cache"))
    ort = Tagger.from_pretrained(model_dir, backend="onnxruntime", precision="int8-mixed")
    cfg = ExitConfig("token", threshold=0.3, window=1)
    a, b = ort.predict_words(SENTENCES, cfg, 1), fp32.predict_words(SENTENCES, cfg, 1)
    same = sum(p == q for s, t in zip(a.tags, b.tags) for p, q in zip(s, t)) / sum(map(len, a.tags))
    assert same >= 0.9
    kinds = [n.op_type for n, _ in graph_nodes(onnx.load(str(ort.engine.layers.root / "climb-int8-mixed.onnx")).graph)]
    assert kinds.count("MatMulInteger") == 5 * ort.num_layers
    assert kinds.count("Gemm") + kinds.count("MatMul") == (1 + 1 + 2) * ort.num_layers  # ffn_out, head, attention


def test_int8_layers_are_quantized_and_fused(model_dir):
    tagger = Tagger.from_pretrained(model_dir, precision="int8")
    parts = tagger.model.adapter.layers[0]
    assert all(isinstance(getattr(parts, r), precision_module.Int8Linear)
               for r in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out"))
    assert isinstance(tagger.model.heads[0].linear, torch.nn.Linear)  # heads stay float32
    fused = tagger.engine._layer(0)
    x = torch.randn(4, tagger.model.adapter.hidden_size)
    q, k, v = fused.qkv(x).split(tagger.model.adapter.hidden_size, -1)
    assert torch.allclose(q, parts.query(x), atol=1e-5) and torch.allclose(v, parts.value(x), atol=1e-5)


def test_bad_precision_settings_stop_with_one_line(model_dir, monkeypatch):
    with pytest.raises(ConfigError, match="int8 runs on the CPU"):
        precision_module.check_precision("int8", "cuda")
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    with pytest.raises(ConfigError, match="no float16 arithmetic .* use --precision bf16 or fp32"):
        Tagger.from_pretrained(model_dir, precision="fp16")
    with pytest.raises(ConfigError, match="expected one of fp32, bf16, fp16, int8, int8-mixed"):
        Tagger.from_pretrained(model_dir, precision="fp8")
    with pytest.raises(ConfigError, match="a bf16 tagger is for inference"):
        Tagger.from_pretrained(model_dir, precision="bf16").save_pretrained(model_dir.parent / "x")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnxruntime_backend_equals_torch(model_dir, tmp_path, monkeypatch, precision):
    need_module("onnxruntime")
    monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path / "cache"))
    torch_tagger = Tagger.from_pretrained(model_dir, precision=precision)
    ort_tagger = Tagger.from_pretrained(model_dir, backend="onnxruntime", precision=precision)
    docs = SENTENCES * 3
    for cfg in (ExitConfig(), ExitConfig("token", threshold=0.3, window=1), ExitConfig("sentence", threshold=0.3),
                ExitConfig("static", layer=2)):
        for batch_size in (1, 4):
            a = torch_tagger.predict_words(docs, cfg, batch_size)
            b = ort_tagger.predict_words(docs, cfg, batch_size)
            if precision == "fp32":
                assert a.tags == b.tags and a.exit_layers == b.exit_layers
                for x, y in zip(a.scores, b.scores):
                    assert x == pytest.approx(y, abs=1e-4)
            else:  # two int8 implementations round differently; both close to fp32
                same = sum(p == q for s, t in zip(a.tags, b.tags) for p, q in zip(s, t)) / sum(map(len, a.tags))
                assert same >= 0.9
            assert a.stats.flops_speedup == pytest.approx(b.stats.flops_speedup, rel=0.05)
    assert list((tmp_path / "cache" / "onnx").rglob("*.onnx"))  # exported once, cached
    with pytest.raises(ConfigError, match="kv=keep"):
        ort_tagger.predict_words(docs, ExitConfig("token", threshold=0.3, kv="drop"))
    with pytest.raises(ConfigError, match="runs fp32, int8 or int8-mixed"):
        Tagger.from_pretrained(model_dir, backend="onnxruntime", precision="bf16")


# ----------------------------------------------------------------------------- the real small encoder


@pytest.fixture(scope="module")
def small_real_model(tmp_path_factory, shared_data):
    """all-MiniLM-L6-v2 fine-tuned briefly on UNER English EWT (a weak but real NER model)."""
    from earlytag.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("real") / "minilm"
    train(TrainConfig(train="uner-en-ewt:train", dev="uner-en-ewt:dev", output=str(out), task="ner",
                      encoder="all-MiniLM-L6-v2", epochs=1, freeze_epochs=0, train_limit=800, dev_limit=100,
                      lr=1e-4, batch_size=16, progress=False, data_dir=str(shared_data)))
    return out


def test_real_model_bf16_agrees_and_int8_stays_within_one_f1(small_real_model, shared_data):
    base = Tagger.from_pretrained(small_real_model)
    data = base.load("uner-en-ewt:dev", data_dir=shared_data)
    data.sentences = data.sentences[:400]
    ref = base.evaluate(data, exit="none", per_layer=False)
    words = [s.tokens for s in data.sentences]
    ref_tags = base.predict_words(words, "none").tags
    bf16 = Tagger.from_pretrained(small_real_model, precision="bf16")
    tags = bf16.predict_words(words, "none").tags
    agree = sum(a == b for s, t in zip(ref_tags, tags) for a, b in zip(s, t)) / sum(map(len, ref_tags))
    assert agree >= 0.98
    int8 = Tagger.from_pretrained(small_real_model, precision="int8").evaluate(data, exit="none", per_layer=False)
    assert ref["f1"] > 0.3  # a real model, not noise
    assert abs(int8["f1"] - ref["f1"]) <= 0.01


def _slim_mpnet():
    from earlytag.model.adapters import adapter_for

    from .test_slim import SPEC, searched

    model, coefs = searched("mpnet", seed=2)
    from earlytag.model.slim import prune_encoder

    keep_h, keep_f = coefs.masks(SPEC)
    model.config.slim = prune_encoder(model.encoder, model.adapter, keep_h, keep_f, coefs)
    model.adapter = adapter_for(model.encoder)
    return model


@pytest.mark.parametrize("family", ["bert", "mpnet", "slim-mpnet"])
def test_onnxruntime_climbs_one_sentence_in_one_call(tokenizer, tmp_path, monkeypatch, family):
    """Batch size 1 with the onnxruntime backend: the whole climb is one session call (spied), with the same
    tags, exit layers, scores and statistics as the torch engine and as the backend's own layer-by-layer loop, for
    every policy the graph covers, including a threshold that halts every word after the first layer (the later
    layers then do not run, or run on zero rows in the unrolled graph) and per-layer thresholds; the others fall
    back to the layer loop."""
    need_module("onnxruntime")
    from earlytag.engine.backends import OnnxLayers

    monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path / "cache"))
    model = _slim_mpnet() if family == "slim-mpnet" else tiny_model(family, labels=LABELS, seed=4)
    path = tmp_path / "model"
    Tagger(model, tokenizer).save_pretrained(path)
    torch_tagger = Tagger.from_pretrained(path)
    ort_tagger = Tagger.from_pretrained(path, backend="onnxruntime")
    calls = {"climb": 0, "packed": 0, "dense": 0}
    def spy(name):
        original = getattr(OnnxLayers, name)

        def counted(self, *args):
            calls[name] += 1
            return original(self, *args)
        return counted

    for name in calls:
        monkeypatch.setattr(OnnxLayers, name, spy(name))
    layers = torch_tagger.num_layers
    docs = SENTENCES * 2
    covered = [ExitConfig(), ExitConfig("static", layer=2), ExitConfig("token", threshold=0.3, window=1),
               ExitConfig("token", threshold=0.2, window=0, criterion="maxprob"),
               ExitConfig("token", threshold=[0.05 * (i + 1) for i in range(layers)], window=2),
               ExitConfig("token", threshold=1.5, window=1), ExitConfig("sentence", threshold=0.3),
               ExitConfig("token", threshold=1.5, window=1, min_layer=2)]
    for cfg in covered + [ExitConfig("patience", patience=1), ExitConfig("token", threshold=0.3, halted="rescore"),
                          ExitConfig("sentence", threshold=0.3, pool="mean")]:
        ref = torch_tagger.predict_words(docs, cfg, 1)
        # the climb's graph that stops when every word has halted (branching), the one that runs every layer,
        # and no climb graph (the layer loop)
        for whole, branching in ((True, True), (True, False), (False, True)):
            ort_tagger.engine.layers.whole_sentence = whole
            ort_tagger.engine.layers.branching = branching
            before = dict(calls)
            got = ort_tagger.predict_words(docs, cfg, 1)
            climbed = calls["climb"] - before["climb"]
            looped = calls["packed"] + calls["dense"] - before["packed"] - before["dense"]
            if whole and cfg in covered:
                assert climbed == len(docs) and looped == 0, cfg.describe()
            else:
                assert climbed == 0 and looped > 0, cfg.describe()
            assert got.tags == ref.tags and got.exit_layers == ref.exit_layers, (cfg.describe(), whole)
            for x, y in zip(got.scores, ref.scores):
                assert x == pytest.approx(y, abs=1e-4)
            # the statistics: counted by the climb's graph (whole), by ExitPlan after the loop (layer by layer)
            mine, theirs = got.stats.to_dict(), ref.stats.to_dict()
            for key in ("dense_layer_steps", "packed_layer_steps"):  # how the layers ran differs by design
                mine.pop(key), theirs.pop(key)
            for key in ("flops", "flops_full", "flops_speedup", "mean_exit_layer"):
                assert mine.pop(key) == pytest.approx(theirs.pop(key)), (key, cfg.describe(), whole)
            assert mine == theirs, (cfg.describe(), whole)  # counts of sentences, words, tokens, per layer
    ort_tagger.engine.layers.whole_sentence = True
    early = ort_tagger.predict_words(docs, ExitConfig("token", threshold=1.5, window=1), 1)
    assert {e for s in early.exit_layers for e in s} == {1}  # everyone after layer 1: layers 2.. did not run
    floor = ort_tagger.predict_words(docs, ExitConfig("token", threshold=1.5, window=1, min_layer=2), 1)
    assert {e for s in floor.exit_layers for e in s} == {2}  # the floor holds everyone to layer 2 in the graph too


@pytest.mark.parametrize("labels", [9, 2, 1])
def test_climb_head_is_the_engines_head(labels):
    """The batch-1 graphs' head (fewer nodes: the probabilities once, no guard for a log-probability of -inf) gives
    the score, label and entropy of the engine's ``head_scores``, on logits whose smaller probabilities underflow
    to 0 in float32 too (a gap of 200)."""
    from earlytag.engine.backends import _climb_head

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(40, labels, generator=g) * 5
    logits[:8, 0] += 200.0  # every other label's probability is 0 in float32
    score, pred, unc = _climb_head(logits, labels)
    want_score, want_pred, want_unc = head_scores(logits)
    assert torch.equal(pred, want_pred)
    assert torch.allclose(score, want_score, atol=1e-6) and torch.allclose(unc, want_unc, atol=1e-6)
    assert not torch.isnan(unc).any() and float(unc[:8].abs().max()) == 0.0
    if labels > 1:
        assert float(unc[8:].min()) > 0.0  # the values are real entropies, not a constant


def test_branching_climb_runs_no_layer_after_every_word_halted(model_dir, tmp_path, monkeypatch):
    """The climb graph's layers l > 0 sit in nested If branches: ONNX Runtime's profiler records which layers'
    nodes really ran — layer 0 alone when every word halts after it, the first two when they halt after layer 1,
    every layer when nobody halts early — and the outputs equal the unrolled graph's (which runs every layer)."""
    need_module("onnxruntime")
    import json
    import re

    import numpy as np
    import onnxruntime as ort

    from earlytag.data.batching import collate

    monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path / "cache"))
    tagger = Tagger.from_pretrained(model_dir, backend="onnxruntime")
    backend = tagger.engine.layers
    layers = tagger.num_layers
    batch = collate(tagger.featurizer.windows([SENTENCES[0]]), tagger.featurizer.pad_id)
    feeds = {"input_ids": batch.input_ids.numpy(), "token_word": batch.token_word[0].numpy(),
             "word_pos": batch.word_pos[0].numpy(), "window": np.asarray(1), "maxprob": np.asarray(False)}
    backend.branching = False
    unrolled = backend._climb_session()
    backend.branching = True
    backend._climb_session()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the nodes keep their names
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "climb")
    session = ort.InferenceSession(str(backend.root / "climb.onnx"), sess_options=opts,
                                   providers=["CPUExecutionProvider"])
    halting = {1: [9.0] * layers, 2: [0.0] + [9.0] * (layers - 1), layers: [0.0] * layers}  # layers run: taus
    for ran, taus in halting.items():
        feeds["taus"] = np.asarray(taus, dtype=np.float32)
        got, want = session.run(None, feeds), unrolled.run(None, feeds)  # pred, score, exit, counts
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[2], want[2])
        assert np.allclose(got[1], want[1], atol=1e-6) and np.allclose(got[3], want[3])  # one graph unoptimized
        assert set(got[2].tolist()) == {ran - 1}  # every word's exit layer
    events = json.loads(open(session.end_profiling()).read())
    runs = [[]]
    for e in events:
        if e.get("cat") == "Session" and e["name"] == "model_run":
            runs.append([])
        elif e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            match = re.match(r"l(\d+)/", e["name"])
            if match:
                runs[-1].append(int(match.group(1)))
    ran_layers = [sorted(set(r)) for r in runs if r]
    assert ran_layers == [list(range(n)) for n in halting]


def test_a_large_joined_climb_keeps_its_weights_beside_it(model_dir, tmp_path, monkeypatch):
    """A joined climb graph with more weight bytes than protobuf can hold in one file (2 GB: a large encoder's)
    is saved with its weights in a side file; made to happen here by lowering the limit: the side file holds every
    weight (the graph file almost none) and the climb tags as the unrolled graph does."""
    need_module("onnxruntime")
    from earlytag.engine import backends

    monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "INLINE_BYTES", 0)
    tagger = Tagger.from_pretrained(model_dir, backend="onnxruntime")
    cfg = ExitConfig("token", threshold=0.3, window=1)
    joined = tagger.predict_words(SENTENCES, cfg, 1)
    root = tagger.engine.layers.root
    weights = sum(p.numel() * 4 for p in tagger.model.parameters())
    assert (root / "climb.onnx.data").stat().st_size > 0.9 * weights > 9 * (root / "climb.onnx").stat().st_size
    tagger.engine.layers.branching = False
    unrolled = tagger.predict_words(SENTENCES, cfg, 1)
    assert joined.tags == unrolled.tags and joined.exit_layers == unrolled.exit_layers


def test_onnxruntime_int8_climb_keeps_exit_heads_float32(model_dir, tmp_path, monkeypatch):
    need_module("onnxruntime")
    import onnx

    monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path / "cache"))
    tagger = Tagger.from_pretrained(model_dir, backend="onnxruntime", precision="int8")
    fp32 = Tagger.from_pretrained(model_dir)
    cfg = ExitConfig("token", threshold=0.3, window=1)
    a, b = tagger.predict_words(SENTENCES, cfg, 1), fp32.predict_words(SENTENCES, cfg, 1)
    same = sum(p == q for s, t in zip(a.tags, b.tags) for p, q in zip(s, t)) / sum(map(len, a.tags))
    assert same >= 0.9
    nodes = list(graph_nodes(onnx.load(str(tagger.engine.layers.root / "climb-int8.onnx")).graph))
    kinds = [n.op_type for n, _ in nodes]
    assert kinds.count("MatMulInteger") + kinds.count("DynamicQuantizeMatMul") >= 6 * tagger.num_layers
    float_heads = [n for n, g in nodes if n.op_type in ("MatMul", "Gemm")
                   and any(len(i.dims) == 2 and len(LABELS) in i.dims for i in g.initializer if i.name in n.input)]
    assert len(float_heads) == tagger.num_layers  # one float32 MatMul per exit head


def test_auto_backend_runs_batches_in_torch_and_single_sentences_in_one_call(model_dir, tmp_path, monkeypatch):
    need_module("onnxruntime")
    from earlytag.engine.backends import OnnxLayers

    monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path / "cache"))
    calls = []
    original = OnnxLayers.climb
    monkeypatch.setattr(OnnxLayers, "climb", lambda self, *a: calls.append(1) or original(self, *a))
    auto = Tagger.from_pretrained(model_dir, backend="auto")
    reference = Tagger.from_pretrained(model_dir)
    assert auto.single_sentence_backend == "onnxruntime" and reference.single_sentence_backend == "torch"
    assert auto.engine.layers is None  # batches: the torch layer steps
    docs = SENTENCES * 2
    for cfg in (ExitConfig("token", threshold=0.3, window=1), ExitConfig("token", threshold=0.3, kv="drop")):
        for batch_size in (1, 4):
            calls.clear()
            got, ref = auto.predict_words(docs, cfg, batch_size), reference.predict_words(docs, cfg, batch_size)
            assert len(calls) == (len(docs) if batch_size == 1 and cfg.kv == "keep" else 0)
            assert got.tags == ref.tags and got.exit_layers == ref.exit_layers
    assert Tagger.from_pretrained(model_dir, backend="auto", precision="bf16").single_sentence_backend == "torch"


def test_onnxruntime_graphs_are_exported_once_when_threads_race(model_dir, tmp_path, monkeypatch):
    """Sessions open lazily; two threads that need the same graph at once export it once and both tag."""
    need_module("onnxruntime")
    import time
    from concurrent.futures import ThreadPoolExecutor

    from earlytag.engine import backends

    monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path / "cache"))
    exported = []
    original = backends.export_onnx

    def slow_export(module, args, path, *rest):
        exported.append(path.name)
        time.sleep(0.2)  # widen the window in which the other thread could start the same export
        return original(module, args, path, *rest)

    monkeypatch.setattr(backends, "export_onnx", slow_export)
    tagger = Tagger.from_pretrained(model_dir, backend="onnxruntime")
    assert exported == []  # nothing before it is needed
    cfg = ExitConfig("token", threshold=0.3, window=1)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda docs: tagger.predict_words(docs, cfg, 1).tags, [SENTENCES, SENTENCES]))
    assert results[0] == results[1] == Tagger.from_pretrained(model_dir).predict_words(SENTENCES, cfg, 1).tags
    # the climb graph's pieces (layer 0 with the embeddings, each later layer, the statistics), once each
    assert len(exported) == len(set(exported)) == tagger.num_layers + 1


def _float_ffn_out_layers(tagger) -> tuple[int, ...]:
    """Which layers' FFN output projection the tagger's torch model really holds in float32."""
    return tuple(i for i, parts in enumerate(tagger.model.adapter.layers) if type(parts.ffn_out) is torch.nn.Linear)


def test_int8_mixed_keeps_only_the_layers_chosen_for_the_model(model_dir, tmp_path, monkeypatch):
    """A stored choice (earlytag quantize) makes int8-mixed keep those layers' FFN output float32 and quantize the
    rest, with the backend it was made for only; a choice naming a layer the encoder lacks stops with its field."""
    import shutil

    from earlytag.model.tagger import update_saved_config

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    update_saved_config(copy, {"int8_mixed": {"torch": {"float_ffn_out": [1]}}})
    mixed = Tagger.from_pretrained(copy, precision="int8-mixed")
    assert _float_ffn_out_layers(mixed) == (1,)
    for parts in mixed.model.adapter.layers:
        assert all(isinstance(getattr(parts, r), precision_module.Int8Linear)
                   for r in ("query", "key", "value", "attn_out", "ffn_in"))
    assert _float_ffn_out_layers(Tagger.from_pretrained(copy, precision="int8")) == ()  # int8 ignores the choice
    need_module("onnxruntime")
    import onnx

    monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path / "cache"))

    def integer_products() -> int:
        ort = Tagger.from_pretrained(copy, backend="onnxruntime", precision="int8-mixed")
        ort.predict_words(SENTENCES[:1], ExitConfig("token", threshold=0.3, window=1), 1)
        graph = onnx.load(str(ort.engine.layers.root / "climb-int8-mixed.onnx")).graph
        kinds = [n.op_type for n, _ in graph_nodes(graph)]
        return kinds.count("MatMulInteger"), kinds.count("Gemm") + kinds.count("MatMul")

    layers = mixed.num_layers
    assert integer_products() == (5 * layers, (1 + 1 + 2) * layers)  # the torch choice is not ONNX Runtime's
    update_saved_config(copy, {"int8_mixed": {"torch": {"float_ffn_out": [1]}, "onnxruntime": {"float_ffn_out": [1]}}})
    assert integer_products() == (6 * layers - 1, 1 + (1 + 2) * layers)  # ffn_out of layer 1, heads, attention
    update_saved_config(copy, {"int8_mixed": {"torch": {"float_ffn_out": [0, 7]}}})
    with pytest.raises(ConfigError, match=r"int8_mixed\.torch\.float_ffn_out.*\[0, 7\].*has 3"):
        Tagger.from_pretrained(copy, precision="int8-mixed")
    update_saved_config(copy, {"int8_mixed": {"torch": {"float_ffn_out": "0,1"}}})
    with pytest.raises(EarlytagError, match=r"config.json.*int8_mixed\.torch\.float_ffn_out"):
        Tagger.from_pretrained(copy)
    update_saved_config(copy, {"int8_mixed": {"float_ffn_out": [1]}})  # not keyed by backend
    with pytest.raises(EarlytagError, match=r"config.json.*int8_mixed.*backends.*float_ffn_out"):
        Tagger.from_pretrained(copy)


def test_smallest_sufficient_adds_layers_best_first():
    from earlytag.quantize import smallest_sufficient

    single = {0: 0.70, 1: 0.72, 2: 0.60, 3: 0.72}
    seen = []

    def score_of(layers):
        seen.append(layers)
        return {(1,): 0.72, (1, 3): 0.74, (0, 1, 3): 0.80}[layers]

    assert smallest_sufficient(single, score_of, 0.74, 4) == ((1, 3), [(1,), (1, 3)])
    assert seen == [(1,), (1, 3)]  # ties go to the lower layer; stops at the first set reaching the bound
    assert smallest_sufficient(single, score_of, 0.9, 4)[0] == (0, 1, 2, 3)  # none reaches it: every layer


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_quantize_scores_each_quantization_and_stores_the_smallest_sufficient_set(model_dir, tmp_path, monkeypatch,
                                                                                    backend, shared_data):
    """The scores come from what each trial model really held (a spy on predict_words reads its float FFN outputs
    for torch, the keep list handed to the graph quantizer for ONNX Runtime); the choice is stored, trial graphs do
    not go to the user's cache, and a reloaded int8-mixed model keeps exactly the chosen layers float32."""
    import json
    import shutil

    from earlytag import quantize as quantize_module
    from earlytag.engine import backends
    from earlytag.model.tagger import update_saved_config

    if backend == "onnxruntime":
        need_module("onnxruntime")
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    other = "torch" if backend == "onnxruntime" else "onnxruntime"
    update_saved_config(copy, {"int8_mixed": {other: {"float_ffn_out": [0]}}})  # the other backend's choice stays
    monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path / "cache"))
    # the 3-layer model's dev scores by the layers whose FFN output is float32 (() = int8, all three = int8-mixed)
    table = {"fp32": 0.81, (): 0.50, (0, 1, 2): 0.80, (0,): 0.60, (1,): 0.79, (2,): 0.70, (1, 2): 0.80}
    trials = []
    held = {}

    def spy_predict(self, docs, exit=None, batch_size=None):
        if self.precision == "fp32":
            held["key"] = "fp32"
        elif backend == "torch":
            held["key"] = _float_ffn_out_layers(self)
        else:  # the graph quantizer is called when the first graph is opened
            held["key"] = None
        out = real_predict(self, docs, exit, batch_size)
        trials.append(held["key"])
        return out

    real_predict = Tagger.predict_words
    real_quantize_graph = backends.quantize_graph
    fp32 = Tagger.from_pretrained(copy)

    def spy_quantize_graph(model, src, dst, keep=()):
        weights = [lin.weight for lin in keep]
        held["key"] = tuple(i for i, parts in enumerate(fp32.model.adapter.layers)
                            if any(parts.ffn_out.weight.equal(w) for w in weights))
        return real_quantize_graph(model, src, dst, keep)

    monkeypatch.setattr(Tagger, "predict_words", spy_predict)
    monkeypatch.setattr(backends, "quantize_graph", spy_quantize_graph)
    monkeypatch.setattr(quantize_module, "task_scores", lambda task, gold, pred: {"score": table[trials[-1]]})
    choice = quantize_module.choose_int8_mixed(copy, "uner-en-ewt:dev", backend=backend, batch_size=4, limit=6)
    # layer 1 alone (0.79, already scored) misses every layer's 0.80; layers 1 and 2 (scored next) reach it
    assert trials == ["fp32", (), (0, 1, 2), (0,), (1,), (2,), (1, 2)]
    assert choice.float_ffn_out == [1, 2] and choice.score == 0.80 and choice.tried == [[1], [1, 2]]
    assert choice.sentences == 6 and choice.backend == backend
    assert choice.scores == {"fp32": 0.81, "int8": 0.50, "int8-mixed, every layer": 0.80, "layer 0": 0.60,
                             "layer 1": 0.79, "layer 2": 0.70, "layers 1,2": 0.80}
    loose = quantize_module.choose_int8_mixed(copy, "uner-en-ewt:dev", backend=backend, batch_size=4, limit=6,
                                              tolerance=1.0)
    assert loose.float_ffn_out == [1] and loose.score == 0.79
    stored = json.loads((copy / "config.json").read_text())["earlytag"]["int8_mixed"]
    assert stored[other] == {"float_ffn_out": [0]}
    stored = stored[backend]
    assert stored["float_ffn_out"] == [1] and stored["tolerance"] == 1.0
    assert stored["data"] == str((shared_data / "uner_english_ewt" / "en_ewt-ud-dev.iob2").resolve())
    if backend == "onnxruntime":
        assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*-int8*.onnx"))
    monkeypatch.undo()
    assert _float_ffn_out_layers(Tagger.from_pretrained(copy, precision="int8-mixed")) == ((1,) if backend == "torch"
                                                                                          else (0,))


def test_quantize_scores_every_trial_at_the_exit_setting_it_is_given(model_dir, tmp_path, monkeypatch, capsys):
    """earlytag quantize --exit static --layer 1: every trial model is scored with that setting (a spy records
    the setting predict_words really received and the exits it took), the stored choice and the card say so; without
    it, full depth — not the model's stored default exit."""
    import json
    import shutil

    from earlytag.cli import main
    from earlytag.model.tagger import update_saved_config

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    update_saved_config(copy, {"exit": {"policy": "token", "threshold": 0.5}})  # a stored default quantize must not use
    seen = []
    real_predict = Tagger.predict_words

    def spy_predict(self, docs, exit=None, batch_size=None):
        out = real_predict(self, docs, exit, batch_size)
        seen.append((exit.describe(), out.stats.flops < out.stats.flops_full))
        return out

    monkeypatch.setattr(Tagger, "predict_words", spy_predict)
    assert main(["quantize", str(copy), "uner-en-ewt:dev", "--limit", "8", "--batch-size", "4", "--quiet",
                 "--exit", "static", "--layer", "1"]) == 0
    err = capsys.readouterr().err
    static = ExitConfig("static", layer=1).describe()
    assert len(seen) >= 5 and all(s == (static, True) for s in seen)  # every trial exited early, at that setting
    assert f"scored on 8 sentences of uner-en-ewt:dev (--limit sets how many, 0 all), {static}," in err
    stored = json.loads((copy / "config.json").read_text())["earlytag"]["int8_mixed"]["torch"]
    assert ExitConfig.from_dict(stored["exit"]) == ExitConfig("static", layer=1)
    assert "scored with exit" in (copy / "README.md").read_text()
    seen.clear()
    assert main(["quantize", str(copy), "uner-en-ewt:dev", "--limit", "8", "--batch-size", "4", "--quiet"]) == 0
    assert seen and all(s == ("none", False) for s in seen)
    assert json.loads((copy / "config.json").read_text())["earlytag"]["int8_mixed"]["torch"]["exit"] is None
    assert "full depth, torch at batch size 4" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_onednn_backend_tags_as_torch_with_its_products_in_onednn(model_dir, monkeypatch, precision):
    """``--backend onednn``: every Linear of the encoder a OneDnnLinear (same parameters), the engine's products —
    the fused Q/K/V and the modules' — really run through oneDNN (counted), and the tags, exit layers and scores
    are torch's in the same precision, for every policy at batch sizes 1 and 3. Gradients take F.linear, fp16 and
    int8 a refusal."""
    if not precision_module.onednn_available():
        pytest.fail("this torch has no oneDNN linear (torch.ops.mkldnn._linear_pointwise): the onednn backend "
                    "cannot be tested here")
    if precision == "bf16" and not precision_module.onednn_bf16_available():
        pytest.fail("oneDNN has no bfloat16 products on this CPU: the onednn backend's bf16 cannot be tested here")
    from earlytag import api as api_module
    from earlytag.engine import runner

    calls = {"modules": 0, "fused": 0, "finish": 0}

    def counted(where, original):
        def fn(*args):
            calls[where] += 1
            return original(*args)
        return fn

    monkeypatch.setattr(precision_module, "onednn_linear", counted("modules", precision_module.onednn_linear))
    monkeypatch.setattr(runner, "onednn_linear", counted("fused", runner.onednn_linear))
    # the layer's finish: output projection + residual, FFN in + GELU, FFN out + residual, all in oneDNN
    monkeypatch.setattr(runner, "onednn_linear_add", counted("finish", runner.onednn_linear_add))
    monkeypatch.setattr(runner, "onednn_linear_gelu", counted("finish", runner.onednn_linear_gelu))
    torch_tagger = Tagger.from_pretrained(model_dir, precision=precision)
    tagger = Tagger.from_pretrained(model_dir, backend="onednn", precision=precision)
    linears = [m for m in tagger.model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is precision_module.OneDnnLinear for m in linears)
    dtype = precision_module.DTYPES[precision]
    assert all(m.weight.dtype == dtype for m in linears)
    for cfg in POLICY_SETTINGS:
        for batch_size in (1, 3):
            ref = torch_tagger.predict_words(SENTENCES, cfg, batch_size)
            got = tagger.predict_words(SENTENCES, cfg, batch_size)
            assert got.tags == ref.tags and got.exit_layers == ref.exit_layers, cfg.describe()
            for x, y in zip(got.scores, ref.scores):  # bf16: the sums rounded once inside a product, not twice
                assert x == pytest.approx(y, abs=1e-4 if precision == "fp32" else 5e-3)
    assert calls["fused"] > 0 and calls["finish"] > 0
    layer = linears[0]
    with torch.inference_mode():  # a module's own inference product: oneDNN, the values of F.linear
        x = torch.randn(5, layer.in_features, dtype=dtype)
        assert torch.allclose(layer(x).float(), torch.nn.functional.linear(x, layer.weight, layer.bias).float(),
                              atol=1e-5 if precision == "fp32" else 2e-2)
    assert calls["modules"] == 1
    # training: the same output and gradients as nn.Linear (F.linear), oneDNN not called
    before = dict(calls)
    plain = torch.nn.Linear(layer.in_features, layer.out_features, dtype=dtype)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(4, layer.in_features, requires_grad=True, dtype=dtype)
    y, y_ref = layer(x), plain(x)
    y.sum().backward()
    assert torch.equal(y, y_ref) and layer.weight.grad is not None and calls == before
    for other in ("fp16", "int8"):
        with pytest.raises(ConfigError, match="onednn runs fp32 or bf16"):
            Tagger.from_pretrained(model_dir, backend="onednn", precision=other)
    if precision == "bf16":  # a CPU without oneDNN bf16 kernels: refused in one line, fp32 still served
        monkeypatch.setattr(api_module, "onednn_bf16_available", lambda: False)
        with pytest.raises(ConfigError, match="no oneDNN bfloat16 products: use --backend torch"):
            Tagger.from_pretrained(model_dir, backend="onednn", precision="bf16")
        assert Tagger.from_pretrained(model_dir, backend="onednn").engine.bucket is False


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_onednn_fuses_only_torchs_exact_gelu_and_computes_the_finish_of_a_layer(dtype):
    """The onednn backend's fused finish (residual sums and GELU inside oneDNN's products) is used only where the
    encoder's activation is torch's exact GELU, recognised by its values; and it computes what
    ``model.layers.finish`` computes, on 2-D packed rows and 3-D dense batches."""
    if not precision_module.onednn_available():
        pytest.fail("this torch has no oneDNN linear (torch.ops.mkldnn._linear_pointwise): the onednn backend "
                    "cannot be tested here")
    from transformers.activations import ACT2FN

    from earlytag.engine.runner import _FusedLayer
    from earlytag.model.layers import finish

    exact = precision_module.is_exact_gelu
    assert exact(torch.nn.functional.gelu) and exact(ACT2FN["gelu"]) and exact(torch.nn.GELU())
    assert not exact(ACT2FN["gelu_new"]) and not exact(torch.nn.GELU(approximate="tanh"))
    assert not exact(torch.nn.functional.relu) and not exact(ACT2FN["quick_gelu"])
    model = tiny_model("bert", labels=LABELS, seed=3)
    model.encoder.to(dtype)
    precision_module.use_onednn(model)
    model.eval()
    parts = model.adapter.layers[1]
    assert exact(parts.act)
    fused = _FusedLayer(parts)
    assert fused._finish == fused._onednn_finish
    torch.manual_seed(0)
    with torch.inference_mode():
        for shape in ((7, model.adapter.hidden_size), (2, 5, model.adapter.hidden_size)):
            ctx, residual = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
            want = finish(parts, ctx, residual)
            got = fused.finish(ctx, residual)
            tol = 1e-4 if dtype == torch.float32 else 5e-2  # bf16: values of order 1, 8 bits of mantissa
            assert got.dtype == dtype and got.shape == want.shape
            assert torch.allclose(got.float(), want.float(), atol=tol), (shape, (got - want).abs().max())
    parts.act = ACT2FN["gelu_new"]  # an approximation oneDNN's exact GELU would not match: the plain finish
    plain = _FusedLayer(parts)
    assert plain._finish != plain._onednn_finish


def test_row_buckets_pad_packed_steps_and_dense_steps_where_the_products_need_it(model_dir):
    """bf16 products on a CPU see their rows padded to a few bucket sizes (at most 12.5% more rows): through
    ``F.linear`` (the torch backend) on every step, through the onednn backend's prepacked products on the packed
    steps only (a dense step's b·T rows repeat from layer to layer); fp32 never. The padded rows reach the product
    and only the real rows come back."""
    from earlytag.engine.runner import _FusedLayer, bucket_rows

    assert [bucket_rows(n) for n in (1, 16, 17, 100, 128, 129, 1000)] == [1, 16, 18, 104, 128, 144, 1024]
    assert all(n <= bucket_rows(n) <= 1.125 * n for n in range(1, 5000))
    flags = {}
    for precision, backend in (("fp32", "torch"), ("bf16", "torch"), ("bf16", "onednn"), ("fp32", "onednn")):
        e = Tagger.from_pretrained(model_dir, precision=precision, backend=backend).engine
        flags[(precision, backend)] = (e.bucket, e.bucket_dense)
    assert flags == {("fp32", "torch"): (False, False), ("bf16", "torch"): (True, True),
                     ("bf16", "onednn"): (True, False), ("fp32", "onednn"): (False, False)}
    model = tiny_model("bert", labels=LABELS, seed=3)
    seen = []

    def product(x):
        seen.append(x.numel() // x.shape[-1])  # rows, whatever the leading dimensions
        return x * 2

    x = torch.randn(2, 50, 8)  # (b, T, d): 100 rows
    for bucket, dense, want in ((True, False, [104, 100]), (True, True, [104, 104]), (False, False, [100, 100])):
        seen.clear()
        fl = _FusedLayer(model.adapter.layers[0], bucket, dense)
        for as_dense in (False, True):
            y = fl._rows(product, x, dense=as_dense)
            assert torch.equal(y, x * 2)
        assert seen == want


@pytest.mark.parametrize("bias_shape", [None, (3, 1, 1, 7), (3, 4, 5, 7), (1, 4, 5, 7), (3, 1, 5, 7), (1, 1, 1, 7)],
                         ids=["none", "keys", "per-head", "shared-per-head", "per-query", "shared-keys"])
def test_unfused_attention_computes_what_the_fused_one_does(bias_shape):
    from earlytag.model.layers import attend, attend_unfused

    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 5, 32, generator=g)  # (B, Tq, d), 4 heads of 8
    k, v = (torch.randn(3, 7, 32, generator=g) for _ in range(2))  # (B, Tk, d)
    bias = None if bias_shape is None else torch.randn(bias_shape, generator=g)
    if bias_shape == (3, 1, 1, 7):
        bias[0, ..., 5:] = torch.finfo(torch.float32).min  # the first sentence's last two keys masked
    expected = attend(q, k, v, bias, 4)
    got = attend_unfused(q, k, v, bias, 4)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
    half = attend_unfused(q.bfloat16(), k.bfloat16(), v.bfloat16(), None if bias is None else bias.bfloat16(), 4)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), expected, atol=0.06)
    if bias_shape == (3, 1, 1, 7):  # masked keys change nothing: the same as attending over the first five
        alone = attend(q[:1], k[:1, :5], v[:1, :5], bias[:1, ..., :5], 4)
        assert torch.allclose(got[:1], alone, atol=1e-5)


@pytest.mark.parametrize("precision, unfused", [("fp32", False), ("bf16", True), ("fp16", True), ("int8", False)])
def test_engine_attends_unfused_in_half_precision_on_a_cpu(model_dir, precision, unfused, monkeypatch):
    from earlytag.model.layers import attend, attend_unfused

    tagger = Tagger.from_pretrained(model_dir, precision=precision)
    chosen = tagger.engine.attend
    assert chosen is (attend_unfused if unfused else attend)
    seen = []

    def spy(q, *args, **kwargs):
        seen.append(q.dtype)
        return chosen(q, *args, **kwargs)

    monkeypatch.setattr(tagger.engine, "attend", spy)
    for batch_size in (1, 3):  # packed steps of one sentence and of several, and dense ones
        list(tagger.pipe(SENTENCES, exit=ExitConfig("token", threshold=0.3, window=1), batch_size=batch_size))
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    assert len(seen) >= 2 * tagger.num_layers and set(seen) == {half}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_softmax_in_float32_pieces_is_the_softmax(dtype, monkeypatch):
    from earlytag.model import layers

    monkeypatch.setattr(layers, "SOFTMAX_CHUNK", 7 * 9 * 3)  # pieces of 3 rows: 5 pieces, the last of 1 row
    scores = (torch.randn(13, 7, 9, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    scores[2, :, 4:] = torch.finfo(dtype).min  # masked keys
    expected = scores.float().softmax(-1)
    got = layers.softmax_(scores.clone())
    assert got.dtype == dtype and got.shape == scores.shape
    assert torch.allclose(got.float(), expected, atol={torch.float32: 1e-6}.get(dtype, 4e-3))
    assert float(got[2, :, 4:].float().abs().max()) == 0.0  # nothing on masked keys, in every piece
    if dtype != torch.float32:  # written in place: no second tensor of the scores' size
        same = scores.clone()
        assert layers.softmax_(same).data_ptr() == same.data_ptr()
