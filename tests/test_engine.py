"""The early-exit engine: exactness with exit disabled, batch independence, the exit rules, FLOPs."""

from __future__ import annotations

import pytest
import torch

from earlytag.data.batching import Featurizer, collate
from earlytag.engine import Engine, ExitConfig, ExitPlan, ExitPolicy
from earlytag.engine.plan import sentence_counts
from earlytag.engine.policies import head_scores, label_scores, simulate_exits, uncertainty, window_max
from earlytag.errors import ConfigError

from .conftest import tiny_model

SENTENCES = [
    ["Angela", "Merkel", "visited", "Paris", "yesterday", "."],
    ["Hi"],
    ["The", "extraordinarily", "unbelievable", "internationalization", "of", "Zürich", "'s", "banks"],
    ["Obama", "met", "Putin", "in", "Geneva", "on", "Tuesday", "and", "they", "talked", "for", "hours", "."],
]


def batch_of(tokenizer, docs, pad_id=0):
    feat = Featurizer(tokenizer, 128)
    return collate(feat.windows(docs), feat.pad_id)


def mixed_threshold(model, batch) -> float:
    """A threshold that halts about half of the words at layer 1 and lets the rest climb (half-way between
    two uncertainties, so that rounding never decides)."""
    with torch.no_grad():
        probs = model(batch.input_ids, batch.attention_mask, batch.word_pos).logits[0].softmax(-1)
    values = uncertainty(probs)[batch.word_mask].sort().values
    mid = len(values) // 2
    return float(values[mid - 1] + values[mid]) / 2


def mixed(model, batch, **kw) -> ExitConfig:
    return ExitConfig(policy="token", threshold=mixed_threshold(model, batch), window=0, upper_multiplier=1.0, **kw)


def full_forward_probs(model, batch, **kw):
    with torch.no_grad():
        return model(batch.input_ids, batch.attention_mask, batch.word_pos, **kw).logits[-1].softmax(-1)


@pytest.mark.parametrize("family", ["bert", "mpnet"])
@pytest.mark.parametrize("cfg", [
    ExitConfig(),
    ExitConfig(policy="token", threshold=0.0),
    ExitConfig(policy="token", threshold=0.0, kv="drop"),
    ExitConfig(policy="sentence", threshold=0.0),
    ExitConfig(policy="patience", patience=99),
], ids=lambda c: c.describe())
@pytest.mark.parametrize("dense_above", [0.0, 2.0], ids=["dense", "packed"])
def test_exit_disabled_equals_full_forward(tokenizer, family, cfg, dense_above):
    model = tiny_model(family)
    batch = batch_of(tokenizer, SENTENCES)
    ref = full_forward_probs(model, batch)
    out = Engine(model, dense_above=dense_above).run(batch, cfg)
    m = batch.word_mask
    assert torch.equal(out.pred[m], ref.argmax(-1)[m])
    assert torch.allclose(out.score[m], ref.max(-1).values[m], atol=1e-5)
    assert (out.exit_layer[m] == model.num_layers - 1).all()
    assert (out.exit_layer[~m] == -1).all()
    if cfg.policy == "none":
        assert out.stats.flops_speedup == pytest.approx(1.0)


@pytest.mark.parametrize("family", ["bert", "mpnet"])
@pytest.mark.parametrize("kv", ["keep", "drop"])
def test_packed_equals_dense_masked_forward(tokenizer, family, kv):
    """The packed engine equals the dense forward with halted states frozen at their exit layers."""
    model = tiny_model(family, seed=3)
    batch = batch_of(tokenizer, SENTENCES)
    out = Engine(model, dense_above=2.0).run(batch, mixed(model, batch, kv=kv))
    assert 0 < (out.exit_layer[batch.word_mask] < model.num_layers - 1).float().mean() < 1  # a real mix
    with torch.no_grad():
        fwd = model(batch.input_ids, batch.attention_mask, batch.word_pos, word_exit=out.exit_layer.clamp(min=0),
                    token_word=batch.token_word, kv=kv)
    probs = torch.stack(fwd.logits, 1).softmax(-1)  # (B, L, W, C)
    at_exit = probs.gather(1, out.exit_layer.clamp(min=0)[:, None, :, None].expand(-1, 1, -1, probs.shape[-1]))[:, 0]
    m = batch.word_mask
    assert torch.allclose(out.score[m], at_exit.max(-1).values[m], atol=1e-5)
    assert torch.equal(out.pred[m], at_exit.argmax(-1)[m])


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_packed_keys_and_values_of_the_real_tokens_only(tokenizer, family, monkeypatch):
    """Where padding is a large share of a group's (b, T) positions, a packed step's K/V product multiplies the real
    tokens' rows only (the rows it was given are recorded), with the outputs of K/V over every position."""
    from earlytag.engine.runner import _FusedLayer

    model = tiny_model(family, seed=3)
    batch = batch_of(tokenizer, SENTENCES)  # "Hi" beside 13 words: padding is a large share of the positions
    cfg = mixed(model, batch)
    real, positions = int(batch.attention_mask.sum()), batch.attention_mask.numel()
    assert real < 0.75 * positions
    rows: list[int] = []
    kv = _FusedLayer.kv
    monkeypatch.setattr(_FusedLayer, "kv", lambda self, x, **kw: rows.append(x.numel() // x.shape[-1]) or kv(self, x, **kw))
    runs = {}
    for below in (0.0, None):  # never; the default (wherever there is padding)
        rows.clear()
        engine = Engine(model, dense_above=2.0) if below is None else Engine(model, dense_above=2.0, kv_real_below=0)
        runs[below] = engine.run(batch, cfg), list(rows)
    (every, every_rows), (out, real_rows) = runs[0.0], runs[None]
    assert every_rows[0] == positions and real_rows[0] == real  # layer 0: every sentence live, all packed
    assert len(every_rows) == len(real_rows) == model.num_layers  # one K/V product per packed step
    assert all(r <= e for r, e in zip(real_rows, every_rows)) and sum(real_rows) < sum(every_rows)
    assert 0 < (out.exit_layer[batch.word_mask] < model.num_layers - 1).float().mean() < 1  # a real mix
    assert torch.equal(out.exit_layer, every.exit_layer) and torch.equal(out.pred, every.pred)
    assert torch.allclose(out.score, every.score, atol=1e-6)
    # several batches refilling each other: merged groups of different lengths, groups compacted (their padding
    # columns dropped) as sentences finish
    batches = [batch_of(tokenizer, SENTENCES), batch_of(tokenizer, [["Yes"], SENTENCES[3] * 3]), batch]
    many = {below: Engine(model, refill_tokens=10_000, kv_real_below=below).run_many(batches, cfg)
            for below in (0.0, 1.0)}
    for x, y in zip(many[0.0], many[1.0]):
        assert torch.equal(x.exit_layer, y.exit_layer) and torch.equal(x.pred, y.pred)
        assert torch.allclose(x.score, y.score, atol=1e-6)


def test_keys_values_of_the_real_tokens_of_a_compacted_group(tokenizer):
    """A group the longest sentence has left keeps a column slice of its token mask: the real tokens' K/V rows are
    found in it, equal the product over every position there, and padding keys are zero (masked anyway)."""
    model = tiny_model("bert", seed=3)
    engine = Engine(model)  # the default: real rows wherever there is padding
    batch = batch_of(tokenizer, [SENTENCES[3], SENTENCES[1], SENTENCES[0]])  # the longest first
    g = engine._start(batch, 0, ExitPolicy(ExitConfig("token", threshold=0.1), model.num_layers))
    g.keep(torch.tensor([1, 2]))  # the longest sentence leaves: padding columns dropped
    assert not g.tok_mask.is_contiguous()
    fl, da = engine._layer(0), model.adapter.layers[0].attn_size
    k, v = engine._keys_values(fl, g, da)  # (b, T, da) each
    want_k, want_v = fl.kv(g.h).split(da, -1)
    m = g.tok_mask
    assert k.shape == want_k.shape and 0 < int(m.sum()) < m.numel()
    assert torch.allclose(k[m], want_k[m], atol=1e-5) and torch.allclose(v[m], want_v[m], atol=1e-5)
    assert float(k[~m].abs().max()) == 0.0 and float(v[~m].abs().max()) == 0.0


@pytest.mark.parametrize("family", ["bert", "mpnet"])
@pytest.mark.parametrize("policy", ["token", "token-drop", "sentence", "patience"])
def test_results_do_not_depend_on_batch_composition(tokenizer, family, policy):
    model = tiny_model(family, seed=3)
    engine = Engine(model)
    tau = mixed_threshold(model, batch_of(tokenizer, SENTENCES))
    cfg = {
        "token": mixed(model, batch_of(tokenizer, SENTENCES)),
        "token-drop": mixed(model, batch_of(tokenizer, SENTENCES), kv="drop"),
        "sentence": ExitConfig(policy="sentence", threshold=tau, pool="mean"),
        "patience": ExitConfig(policy="patience", patience=1),
    }[policy]
    together = engine.run(batch_of(tokenizer, SENTENCES), cfg)
    reordered = engine.run(batch_of(tokenizer, SENTENCES[::-1]), cfg)
    for i, sent in enumerate(SENTENCES):
        alone = engine.run(batch_of(tokenizer, [sent]), cfg)
        n = len(sent)
        j = len(SENTENCES) - 1 - i
        assert torch.equal(alone.exit_layer[0, :n], together.exit_layer[i, :n])
        assert torch.equal(alone.exit_layer[0, :n], reordered.exit_layer[j, :n])
        assert torch.equal(alone.pred[0, :n], together.pred[i, :n])
        assert torch.allclose(alone.score[0, :n], together.score[i, :n], atol=1e-5)


def test_subwords_halt_with_their_word_and_specials_stay(tokenizer):
    """Active-token counts per layer = sub-words of the still-active words + the specials of live sentences."""
    model = tiny_model("bert", seed=3)
    batch = batch_of(tokenizer, SENTENCES)
    out = Engine(model).run(batch, mixed(model, batch))
    subwords = torch.zeros_like(batch.word_pos)  # (B, W) sub-words per word
    for b in range(batch.size):
        tw = batch.token_word[b]
        for w in range(int(batch.word_mask[b].sum())):
            subwords[b, w] = int((tw == w).sum())
    specials = ((batch.token_word < 0) & batch.attention_mask.bool()).sum(1)  # (B,)
    assert (subwords[batch.word_mask] >= 1).all() and subwords.max() > 1  # some words have several pieces
    for layer in range(model.num_layers):
        active_w = batch.word_mask & (out.exit_layer >= layer)
        live = active_w.any(1)
        expected = int((subwords * active_w).sum() + specials[live].sum())
        assert out.stats.active_tokens[layer] == expected


def test_everything_halts_at_layer_one(tokenizer):
    model = tiny_model("bert")
    batch = batch_of(tokenizer, SENTENCES)
    out = Engine(model).run(batch, ExitConfig(policy="token", threshold=1.01, window=2, upper_multiplier=1.0))
    assert (out.exit_layer[batch.word_mask] == 0).all()
    assert out.stats.active_tokens[1:] == [0] * (model.num_layers - 1)
    assert out.stats.mean_exit_layer == pytest.approx(1.0)
    assert out.stats.flops_speedup > model.num_layers * 0.9
    ref = torch.stack(model(batch.input_ids, batch.attention_mask, batch.word_pos).logits).softmax(-1)[0]
    assert torch.equal(out.pred[batch.word_mask], ref.argmax(-1)[batch.word_mask])


def test_a_zero_threshold_is_a_floor_no_word_halts_below(tokenizer):
    """Per-layer thresholds with τ = 0 on the lowest layers (``exit_windows.py --min-layers``): no word halts there
    (halting needs uncertainty strictly below τ), and every word halts at the first layer above the floor when its
    τ lets everyone go — the exit layers and the active tokens the engine reports."""
    model = tiny_model("bert")
    layers = model.num_layers
    assert layers >= 3
    batch = batch_of(tokenizer, SENTENCES)
    for floor in (1, 2):  # no halting at layers 1..floor (0-based exits 0..floor-1)
        taus = [0.0] * floor + [1.01] * (layers - floor)
        out = Engine(model).run(batch, ExitConfig(policy="token", threshold=taus, window=2))
        assert (out.exit_layer[batch.word_mask] == floor).all()
        assert all(n > 0 for n in out.stats.active_tokens[: floor + 1])
        assert out.stats.active_tokens[floor + 1:] == [0] * (layers - floor - 1)
        assert out.stats.mean_exit_layer == pytest.approx(floor + 1.0)


def test_min_layer_is_the_floor_of_the_per_layer_list(tokenizer):
    """``min_layer`` (``--min-layer``) is the floor the per-layer lists above spell by hand: the same thresholds and
    the same engine run — exit layers, predictions and active tokens — on token and sentence exit."""
    model = tiny_model("bert")
    layers = model.num_layers
    batch = batch_of(tokenizer, SENTENCES)
    for floor in (2, 3):
        by_hand = [0.0] * (floor - 1) + [1.01] * (layers - floor + 1)
        for policy in ("token", "sentence"):
            cfg = ExitConfig(policy=policy, threshold=1.01, upper_multiplier=1.0, min_layer=floor)
            assert cfg.thresholds(layers) == by_hand
            out = Engine(model).run(batch, cfg)
            ref = Engine(model).run(batch, ExitConfig(policy=policy, threshold=by_hand))
            assert (out.exit_layer[batch.word_mask] == floor - 1).all()
            assert torch.equal(out.exit_layer, ref.exit_layer) and torch.equal(out.pred, ref.pred)
            assert out.stats.active_tokens == ref.stats.active_tokens
            assert out.stats.active_tokens[floor:] == [0] * (layers - floor)


def test_min_layer_thresholds_descriptions_and_stored_form():
    cfg = ExitConfig(policy="token", threshold=0.1, min_layer=3)
    assert cfg.thresholds(6) == [0.0, 0.0, 0.1, 0.2, 0.2, 0.2]  # the upper half still at 2τ
    assert ExitConfig(policy="token", threshold=[0.1, 0.2, 0.3], min_layer=2).thresholds(3) == [0.0, 0.2, 0.3]
    assert ExitConfig(policy="sentence", threshold=0.1, min_layer=2).thresholds(4) == [0.0, 0.1, 0.1, 0.1]
    assert cfg.describe().endswith("from layer 3") and "from layer" not in ExitConfig("token", threshold=0.1).describe()
    assert cfg.to_dict()["min_layer"] == 3 and ExitConfig.from_dict(cfg.to_dict()) == cfg
    # no floor: stored as before the setting existed (a calibration table's rows and a model's default read alike)
    assert "min_layer" not in ExitConfig("token", threshold=0.1).to_dict()
    assert "min_layer" not in ExitConfig("patience", min_layer=3).to_dict()  # a setting patience does not read


def test_a_grid_takes_the_floor_and_window_only_where_its_policy_reads_them():
    from earlytag.bench import default_grid
    from earlytag.calibrate import candidates

    token = default_grid("token", 6, thresholds=[0.1, 0.2], window=1, min_layer=2)
    assert [(c.threshold, c.window, c.min_layer) for c in token] == [(0.1, 1, 2), (0.2, 1, 2)]
    assert all(c.min_layer == 1 for c in default_grid("static", 6, min_layer=2))
    assert {c.min_layer for c in candidates("sentence", 6, min_layer=3)} == {3}
    both = candidates("token", 6, min_layer=[1, 2, 2])  # several floors: the grid once per floor, repeats dropped
    assert len(both) == 2 * len(candidates("token", 6)) and [c.min_layer for c in both].count(2) == len(both) // 2
    assert candidates("patience", 6, min_layer=[1, 2]) == candidates("patience", 6)  # no floors: its grid once
    assert {c.window for c in default_grid("patience", 6, window=1)} == {1}
    with pytest.raises(ConfigError) as info:
        candidates("token", 6, min_layer=7)
    assert info.value.field == "exit.min_layer"


def test_empty_and_one_word_sentences(tokenizer):
    model = tiny_model("bert")
    batch = batch_of(tokenizer, [[], ["Hi"], [], ["Hello", "there"]])
    for cfg in (ExitConfig(), ExitConfig(policy="token", threshold=0.5), ExitConfig(policy="sentence", threshold=0.5)):
        out = Engine(model).run(batch, cfg)
        assert (out.exit_layer[0] == -1).all() and (out.exit_layer[2] == -1).all()
        assert (out.exit_layer[1, :1] >= 0).all() and (out.exit_layer[3, :2] >= 0).all()
        assert out.stats.words == 3


def test_static_runs_exactly_k_layers(tokenizer):
    model = tiny_model("bert")
    calls = [0] * model.num_layers
    hooks = [parts.ffn_in.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, parts in enumerate(model.adapter.layers)]
    batch = batch_of(tokenizer, SENTENCES)
    out = Engine(model).run(batch, ExitConfig(policy="static", layer=2))
    for h in hooks:
        h.remove()
    assert calls == [1, 1, 0]
    assert (out.exit_layer[batch.word_mask] == 1).all()
    ref = model(batch.input_ids, batch.attention_mask, batch.word_pos, num_layers=2).logits[-1]
    assert torch.equal(out.pred[batch.word_mask], ref.argmax(-1)[batch.word_mask])
    assert out.stats.flops_speedup == pytest.approx(1.5, rel=0.05)


# ----------------------------------------------------------------------------- policies as pure tensor code


def test_uncertainty_criteria():
    probs = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    assert torch.allclose(uncertainty(probs), torch.tensor([0.0, 1.0, 0.6309]), atol=1e-4)
    assert torch.allclose(uncertainty(probs, "maxprob"), torch.tensor([0.0, 2 / 3, 0.5]))


def test_window_rule():
    unc = torch.tensor([[0.0, 0.0, 0.75, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.ones_like(unc, dtype=torch.bool)
    assert window_max(unc, mask, 1).tolist() == [[0.0, 0.75, 0.75, 0.75, 0.0, 0.0, 0.0]]
    policy = ExitPolicy(ExitConfig(policy="token", threshold=0.5, window=2), num_layers=4)
    halt = policy.halt(0, unc, torch.zeros_like(unc, dtype=torch.long), mask.clone(), mask, {})
    assert halt.tolist() == [[False, False, False, False, False, True, True]]
    # padding words never hold a word back; a halted word's (old) uncertainty still counts
    mask[0, 6] = False
    halt = policy.halt(0, unc, torch.zeros_like(unc, dtype=torch.long), mask.clone(), mask, {})
    assert halt.tolist() == [[False, False, False, False, False, True, False]]


def test_thresholds_lower_and_upper_half():
    cfg = ExitConfig(policy="token", threshold=0.1)
    assert cfg.thresholds(6) == [0.1] * 3 + [0.2] * 3
    assert ExitConfig(policy="token", threshold=[0.1, 0.2, 0.3]).thresholds(3) == [0.1, 0.2, 0.3]


def test_sentence_rule_max_and_mean():
    unc = torch.tensor([[0.1, 0.3], [0.1, 0.1]])
    mask = torch.ones_like(unc, dtype=torch.bool)
    pol = ExitPolicy(ExitConfig(policy="sentence", threshold=0.2), 4)
    assert pol.halt(0, unc, None, mask.clone(), mask, {}).tolist() == [[False, False], [True, True]]
    pol = ExitPolicy(ExitConfig(policy="sentence", threshold=0.25, pool="mean"), 4)
    assert pol.halt(0, unc, None, mask.clone(), mask, {}).tolist() == [[True, True], [True, True]]


def test_patience_rule():
    # layer predictions of 3 words over 5 layers
    pred = torch.tensor([[[1, 2, 3], [1, 2, 4], [1, 5, 4], [1, 5, 4], [1, 5, 4]]])  # (B, L, W)
    unc = torch.zeros(pred.shape)
    mask = torch.ones((1, 3), dtype=torch.bool)
    # word 1 changes its mind at layer 3 and never gets 2 patient layers: it runs to the last layer
    exits = simulate_exits(unc, pred, mask, ExitConfig(policy="patience", patience=2))
    assert exits.tolist() == [[2, 4, 3]]
    exits = simulate_exits(unc, pred, mask, ExitConfig(policy="patience", patience=1))
    assert exits.tolist() == [[1, 1, 2]]
    # with the window, word 1 waits for word 2 (and then for itself); halted word 0 no longer holds it
    exits = simulate_exits(unc, pred, mask, ExitConfig(policy="patience", patience=1, patience_window=True, window=1))
    assert exits.tolist() == [[1, 3, 3]]


@pytest.mark.parametrize("settings, field", [
    ({"policy": "fast"}, "exit.policy"),
    ({"policy": "token"}, "exit.threshold"),
    ({"policy": "token", "threshold": -1}, "exit.threshold"),
    ({"policy": "token", "threshold": [0.1, 0.2]}, "exit.threshold"),
    ({"policy": "static", "layer": 9}, "exit.layer"),
    ({"policy": "token", "threshold": 0.1, "window": -1}, "exit.window"),
    ({"policy": "patience", "patience": 0}, "exit.patience"),
    ({"policy": "none", "kv": "maybe"}, "exit.kv"),
    ({"policy": "none", "speed": 2}, "exit.speed"),
    ({"policy": "token", "threshold": 0.1, "min_layer": 0}, "exit.min_layer"),
    ({"policy": "token", "threshold": 0.1, "min_layer": 7}, "exit.min_layer"),
    ({"policy": "sentence", "threshold": 0.1, "min_layer": 1.5}, "exit.min_layer"),
])
def test_invalid_exit_settings_name_the_field(settings, field):
    with pytest.raises(ConfigError) as info:
        ExitConfig.from_dict(settings).validated(6)
    assert info.value.field == field


@pytest.mark.parametrize("family", ["bert", "mpnet"])
@pytest.mark.parametrize("policy", ["token", "token-drop", "sentence", "patience"])
def test_refill_across_batches_gives_the_same_results(tokenizer, family, policy):
    """run_many parks thin groups and merges them with the next batch's survivors: same answers per sentence."""
    model = tiny_model(family, seed=3)
    docs = SENTENCES + [s[::-1] for s in SENTENCES] + [["One"], SENTENCES[3] * 2, []]
    feat = Featurizer(tokenizer, 128)
    windows = feat.windows(docs)
    batches = [collate(windows[i:i + 3], feat.pad_id) for i in range(0, len(windows), 3)]  # sizes differ
    tau = mixed_threshold(model, batches[0])
    cfg = {"token": ExitConfig("token", threshold=tau, window=1), "token-drop": ExitConfig("token", threshold=tau,
           window=1, kv="drop"), "sentence": ExitConfig("sentence", threshold=tau, pool="mean"),
           "patience": ExitConfig("patience", patience=1)}[policy]
    engine = Engine(model, refill_tokens=10_000)  # everything waits for company: maximal merging
    alone = [engine.run(b, cfg) for b in batches]
    together = engine.run_many(batches, cfg)
    for a, t, b in zip(alone, together, batches):
        m = b.word_mask
        assert torch.equal(a.exit_layer, t.exit_layer)
        assert torch.equal(a.pred[m], t.pred[m])
        assert torch.allclose(a.score[m], t.score[m], atol=1e-5)
        assert torch.allclose(a.flops, t.flops)
        assert a.stats.active_tokens == t.stats.active_tokens
        assert a.stats.words_exited == t.stats.words_exited


def reference_flops(batch, exit_layer, num_layers, d, f, c, kv, heads_everywhere, rescore=False):
    """FLOPs per sentence by the formula of docs/design.md, counted in plain loops, layer by layer. With
    ``rescore`` the head of a layer scores every word of a live sentence, halted ones too."""
    out = []
    for b in range(batch.size):
        exits = [int(e) for e, m in zip(exit_layer[b], batch.word_mask[b]) if m]
        tokens = [int(w) for w, m in zip(batch.token_word[b], batch.attention_mask[b]) if m]
        total = 0.0
        for layer in range(num_layers):
            if not any(e >= layer for e in exits):
                continue  # the sentence has left the batch
            a = sum(1 for w in tokens if w < 0 or exits[w] >= layer)  # specials + sub-words of active words
            n = len(tokens) if kv == "keep" else a
            total += 4 * n * d * d + 4 * a * d * d + 4 * a * d * f + 4 * a * n * d
            if heads_everywhere or layer == num_layers - 1:
                total += 2 * sum(1 for e in exits if rescore or e >= layer) * d * c
        out.append(total)
    return out


@pytest.mark.parametrize("name", ["none", "static", "token-rescore", "token-frozen", "token-drop", "sentence", "patience"])
def test_flops_per_sentence_follow_the_formula(tokenizer, name):
    model = tiny_model("bert", seed=3)
    batch = batch_of(tokenizer, SENTENCES + [[]])
    cfg = {"none": ExitConfig(), "static": ExitConfig("static", layer=2), "token-rescore": mixed(model, batch, halted="rescore"),
           "token-frozen": mixed(model, batch, halted="frozen"), "token-drop": mixed(model, batch, kv="drop"),
           "sentence": ExitConfig("sentence", threshold=0.5), "patience": ExitConfig("patience", patience=1)}[name]
    out = Engine(model).run(batch, cfg)
    a = model.adapter
    depth = cfg.layer or model.num_layers
    expected = reference_flops(batch, out.exit_layer, depth, a.hidden_size, a.intermediate_size,
                               model.config.num_labels, cfg.kv, cfg.policy not in ("none", "static"),
                               rescore=cfg.policy in ("token", "sentence") and cfg.halted == "rescore")
    assert out.flops.tolist() == pytest.approx(expected)
    full = reference_flops(batch, torch.full_like(out.exit_layer, model.num_layers - 1), model.num_layers,
                           a.hidden_size, a.intermediate_size, model.config.num_labels, "keep", False)
    assert out.flops_full.tolist() == pytest.approx(full)  # the empty sentence costs nothing at any depth
    assert out.stats.flops == pytest.approx(sum(expected))


@pytest.mark.parametrize("heads_every_layer", [True, False])
def test_sentence_counts_equal_the_plan(tokenizer, heads_every_layer):
    """The one-sentence count traced into the ONNX Runtime climb graphs (``sentence_counts``) gives what
    :class:`ExitPlan` counts for the same exit layers — FLOPs (also with layers of different sizes, as a slim model
    has), full-depth FLOPs, Σ exit layers, tokens per layer, words exited per layer — and the FLOPs of the plain-loop
    reference, on every sentence, for random exit layers and shallower settings."""
    gen = torch.Generator().manual_seed(0)
    d, c, model_layers = 16, 5, 4
    da, f = [16.0, 8.0, 12.0, 16.0], [40.0, 24.0, 36.0, 40.0]
    for layers in (4, 2):
        for doc in SENTENCES:
            b = batch_of(tokenizer, [doc])
            w = b.word_pos.shape[1]
            exits = torch.randint(0, layers, (1, w), generator=gen) if heads_every_layer else torch.full((1, w), layers - 1)
            got = sentence_counts(exits[0], b.token_word[0], layers, d, da, f, c, heads_every_layer).tolist()
            plan = ExitPlan(exits, b.word_mask, b.token_word, b.attention_mask.bool(), layers, "keep", False,
                            [heads_every_layer or i == layers - 1 for i in range(layers)])
            assert got[0] == pytest.approx(float(plan.flops(d, da, f, c)[0]))
            assert got[1] == pytest.approx(float(plan.flops_full(d, da, f, c)[0]))
            assert got[2] == plan.exit_layer_sum
            assert got[3:3 + layers] == plan.active_counts[0].tolist()
            assert got[3 + layers:] == plan.words_exited.tolist()
            same = sentence_counts(exits[0], b.token_word[0], layers, d, [16.0] * model_layers, [40.0] * model_layers,
                                   c, heads_every_layer)[0]
            assert float(same) == pytest.approx(reference_flops(b, exits, layers, d, 40, c, "keep", heads_every_layer)[0])


# ----------------------------------------------------------------------------- what the engine really computed


class RowRecorder:
    """Rows each layer really multiplied: forward hooks on every layer's FFN input projection, and the rows the
    engine's exit head was given (it multiplies the head's weights itself, labels first: ``Engine._head``)."""

    def __init__(self, model, monkeypatch):
        self.ffn = [0] * model.num_layers
        self.head = [0] * model.num_layers
        self.hooks = []
        for i, parts in enumerate(model.adapter.layers):
            self.hooks.append(parts.ffn_in.register_forward_hook(self._count(self.ffn, i)))
        head, store = Engine._head, self.head

        def counted_head(engine, layer, hw, criterion):
            store[layer] += hw.shape[0]
            return head(engine, layer, hw, criterion)

        monkeypatch.setattr(Engine, "_head", counted_head)  # undone after the test, whatever happens in it

    @staticmethod
    def _count(store, i):
        def hook(module, args, output):
            store[i] += args[0].reshape(-1, args[0].shape[-1]).shape[0]
        return hook

    def remove(self):
        for h in self.hooks:
            h.remove()


@pytest.mark.parametrize("halted", ["rescore", "frozen"])
@pytest.mark.parametrize("kv", ["keep", "drop"])
def test_rows_really_computed_match_active_tokens_and_flops(tokenizer, halted, kv, monkeypatch):
    """Packed steps: the FFN multiplies exactly the active tokens of each layer (counted here in plain loops from
    the exit layers), the heads exactly the words the exit rule says, and the reported FLOPs are the formula
    applied to those recorded rows."""
    model = tiny_model("bert", seed=3)
    batch = batch_of(tokenizer, SENTENCES)
    cfg = mixed(model, batch, kv=kv, halted=halted)
    rec = RowRecorder(model, monkeypatch)
    out = Engine(model, dense_above=2.0).run(batch, cfg)  # always packed: no wasted rows
    rec.remove()
    assert 0 < (out.exit_layer[batch.word_mask] < model.num_layers - 1).float().mean() < 1
    a = model.adapter
    d, f, c, L = a.hidden_size, a.intermediate_size, model.config.num_labels, model.num_layers
    expected_tokens, expected_heads, live = [0] * L, [0] * L, [0] * L
    for b in range(batch.size):
        exits = [int(e) for e, m in zip(out.exit_layer[b], batch.word_mask[b]) if m]
        tokens = [int(w) for w, m in zip(batch.token_word[b], batch.attention_mask[b]) if m]
        for layer in range(L):
            if max(exits) < layer:
                continue  # the sentence has left
            expected_tokens[layer] += sum(1 for w in tokens if w < 0 or exits[w] >= layer)
            expected_heads[layer] += len(exits) if halted == "rescore" else sum(1 for e in exits if e >= layer)
            live[layer] += len(tokens)
    assert rec.ffn == expected_tokens == out.stats.active_tokens
    assert rec.head == expected_heads
    if halted == "rescore":
        assert rec.head[-1] > sum(1 for e in out.exit_layer[batch.word_mask] if e == L - 1)  # halted words too
    # the FLOPs formula on the recorded rows (K/V rows: live tokens with kv=keep, the active ones with drop)
    per_sentence_kv = None if kv == "keep" else expected_tokens
    flops = 0.0
    for layer in range(L):
        n_kv = live[layer] if per_sentence_kv is None else per_sentence_kv[layer]
        flops += 4 * n_kv * d * d + 4 * rec.ffn[layer] * d * d + 4 * rec.ffn[layer] * d * f + 2 * rec.head[layer] * d * c
    attention = sum(4 * pa * pn * d for pa, pn in _attention_pairs(batch, out.exit_layer, L, kv))
    assert out.stats.flops == pytest.approx(flops + attention)


def _attention_pairs(batch, exit_layer, num_layers, kv):
    """(active, key) token counts per sentence and layer: the attention term needs them per sentence."""
    for b in range(batch.size):
        exits = [int(e) for e, m in zip(exit_layer[b], batch.word_mask[b]) if m]
        tokens = [int(w) for w, m in zip(batch.token_word[b], batch.attention_mask[b]) if m]
        for layer in range(num_layers):
            if exits and max(exits) >= layer:
                act = sum(1 for w in tokens if w < 0 or exits[w] >= layer)
                yield act, (len(tokens) if kv == "keep" else act)


def test_sentence_exit_inside_the_engine(tokenizer):
    """SENTEE in the engine: a sentence whose most uncertain word is below τ after layer 1 leaves there, whole;
    the others go on (the values come from the full-depth forward, which agrees up to the first exit)."""
    model = tiny_model("bert", seed=3)
    batch = batch_of(tokenizer, SENTENCES)
    with torch.no_grad():
        probs = model(batch.input_ids, batch.attention_mask, batch.word_pos).logits[0].softmax(-1)
    worst = uncertainty(probs).masked_fill(~batch.word_mask, 0).max(1).values  # (B,)
    order = worst.sort().values
    tau = float(order[1] + order[2]) / 2  # two sentences leave after layer 1, two climb on
    out = Engine(model).run(batch, ExitConfig("sentence", threshold=tau))
    for b in range(batch.size):
        exits = out.exit_layer[b][batch.word_mask[b]]
        assert (exits == exits[0]).all()  # a sentence exits whole
        assert (exits[0] == 0) == bool(worst[b] < tau)
    assert (out.exit_layer[batch.word_mask] > 0).any()


def test_merged_groups_count_each_layer_step_once(tokenizer):
    model = tiny_model("bert", seed=3)
    feat = Featurizer(tokenizer, 128)
    windows = feat.windows(SENTENCES * 3)
    batches = [collate(windows[i:i + 4], feat.pad_id) for i in range(0, len(windows), 4)]
    cfg = mixed(model, batches[0])
    engine = Engine(model, refill_tokens=10_000)  # groups wait for each other and merge
    together = engine.run_many(batches, cfg)
    steps = sum(o.stats.dense_layers + o.stats.packed_layers for o in together)
    calls = [0]
    counter = [model.adapter.layers[i].ffn_in.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
               for i in range(model.num_layers)]
    engine.run_many(batches, cfg)
    for h in counter:
        h.remove()
    assert steps == calls[0]  # one count per layer step that really ran


def test_head_scores_never_nan():
    logits = torch.tensor([[0.0, float("-inf"), 2.0], [float("-inf"), float("-inf"), 1.0]])
    score, pred, unc = head_scores(logits)
    assert not torch.isnan(unc).any() and not torch.isnan(score).any()
    assert unc[1] == 0.0 and pred.tolist() == [2, 2]
    for dtype in (torch.bfloat16, torch.float16):
        _, _, u = head_scores(torch.tensor([[30.0, -30.0, 0.0]], dtype=dtype))
        assert u.dtype == torch.float32 and torch.isfinite(u).all()


@pytest.mark.parametrize("criterion", ["entropy", "maxprob"])
def test_label_scores_are_head_scores_labels_first(criterion):
    """The engine's head scores its logits laid out ``(C, N)``: the same score, label and uncertainty as
    ``head_scores`` of the ``(N, C)`` logits, with a label of probability 0 (a -inf logit or an underflow), ties
    (the first best label, as ``max``) and two labels."""
    g = torch.Generator().manual_seed(3)
    for c in (2, 9):
        logits = torch.randn(64, c, generator=g) * 6
        logits[0, 0] = float("-inf")
        logits[1] = torch.tensor([80.0, -80.0] + [0.0] * (c - 2))  # probabilities that underflow to 0
        logits[2, :2] = 1.5  # a tie between labels 0 and 1, both the best
        logits[2, 2:] = -1.0
        want = head_scores(logits, criterion)
        got = label_scores(logits.t().contiguous(), criterion)
        assert torch.equal(got[1], want[1]) and got[1][2] == 0
        for g_, w_ in ((got[0], want[0]), (got[2], want[2])):
            assert g_.dtype == torch.float32 and not torch.isnan(g_).any()
            torch.testing.assert_close(g_, w_, atol=1e-6, rtol=1e-5)
        assert got[2][1] < 1e-6 and abs(float(got[2][2]) - float(want[2][2])) < 1e-6


def test_exit_config_from_dict_does_not_drop_target_speedup():
    with pytest.raises(ConfigError, match="exit.target_speedup"):
        ExitConfig.from_dict({"policy": "token", "threshold": 0.1, "target_speedup": 3})
