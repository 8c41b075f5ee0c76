"""Self-sampling: simulated exits equal the engine's, halted words leave the loss, kv=drop without exit is exact."""

from __future__ import annotations

import random

import pytest
import torch

from earlytag.data.batching import Featurizer, collate
from earlytag.engine import Engine, ExitConfig, simulate_exits
from earlytag.engine.policies import uncertainty
from earlytag.train.self_sampling import SamplingConfig, cache_layer_outputs, sample_exits

from .conftest import tiny_model
from .test_engine import SENTENCES, mixed


def windows_and_batch(tokenizer, labels=False):
    feat = Featurizer(tokenizer, 128)
    lab = [[(i + j) % 5 for j in range(len(s))] for i, s in enumerate(SENTENCES)] if labels else None
    windows = feat.windows(SENTENCES, lab)
    return windows, collate(windows, feat.pad_id)


@pytest.mark.parametrize("family", ["bert", "mpnet"])
@pytest.mark.parametrize("kv", ["keep", "drop"])
@pytest.mark.parametrize("policy", ["token", "patience"])
def test_simulated_exit_layers_equal_the_engines(tokenizer, family, kv, policy):
    """The simulator, fed the per-layer uncertainties the engine's policy saw, reproduces its exit layers."""
    model = tiny_model(family, seed=3)
    _, batch = windows_and_batch(tokenizer)
    cfg = mixed(model, batch, kv=kv) if policy == "token" else ExitConfig(policy="patience", patience=1, kv=kv)
    engine = Engine(model)
    out = engine.run(batch, cfg, trace=True)
    pred_trace = torch.zeros_like(out.trace, dtype=torch.long)
    if policy == "patience":  # patience reads predictions: take them from the frozen-state forward
        with torch.no_grad():
            fwd = model(batch.input_ids, batch.attention_mask, batch.word_pos,
                        word_exit=out.exit_layer.clamp(min=0), token_word=batch.token_word, kv=kv)
        pred_trace = torch.stack(fwd.logits, 1).argmax(-1)
    simulated = simulate_exits(out.trace.nan_to_num(0.0), pred_trace, batch.word_mask, cfg)
    assert torch.equal(simulated, out.exit_layer)


def test_simulation_from_full_forward_equals_engine_until_first_halt(tokenizer):
    """On cached full-depth outputs (what stage 2 uses) the simulation agrees with the engine at layer 1."""
    model = tiny_model("bert", seed=3)
    windows, batch = windows_and_batch(tokenizer)
    cache = cache_layer_outputs(model, windows, 0)
    cfg = mixed(model, batch)
    out = Engine(model).run(batch, cfg)
    for i, w in enumerate(windows):
        sim = simulate_exits(cache.unc[i][None], cache.pred[i][None], torch.ones((1, w.num_words), dtype=torch.bool), cfg)
        assert torch.equal(sim[0] == 0, out.exit_layer[i, : w.num_words] == 0)


def test_layer_loss_ignores_words_halted_below_it(tokenizer):
    model = tiny_model("bert", seed=1)
    _, batch = windows_and_batch(tokenizer, labels=True)
    word_exit = torch.full_like(batch.labels, model.num_layers - 1)
    word_exit[:, ::2] = 0  # every other word halts after layer 1
    out = model(batch.input_ids, batch.attention_mask, batch.word_pos, labels=batch.labels, word_exit=word_exit,
                token_word=batch.token_word)
    changed = batch.labels.clone()
    changed[:, ::2] = (changed[:, ::2] + 1) % 5  # relabel only the halted words
    changed[batch.labels == -100] = -100
    out2 = model(batch.input_ids, batch.attention_mask, batch.word_pos, labels=changed, word_exit=word_exit,
                 token_word=batch.token_word)
    assert out2.layer_losses[0] != out.layer_losses[0]  # layer 1 still sees them
    assert torch.allclose(out2.layer_losses[1:], out.layer_losses[1:])  # later layers do not
    # and their frozen states get no gradient from later layers' heads
    model.zero_grad()
    loss = model(batch.input_ids, batch.attention_mask, batch.word_pos, labels=batch.labels,
                 word_exit=torch.zeros_like(word_exit), token_word=batch.token_word).loss
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.heads[1:].parameters())


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_kv_drop_with_exit_disabled_equals_full_forward(tokenizer, family):
    model = tiny_model(family)
    _, batch = windows_and_batch(tokenizer)
    with torch.no_grad():
        ref = model(batch.input_ids, batch.attention_mask, batch.word_pos).logits
        word_exit = torch.full_like(batch.word_pos, model.num_layers - 1)
        drop = model(batch.input_ids, batch.attention_mask, batch.word_pos, word_exit=word_exit,
                     token_word=batch.token_word, kv="drop").logits
    for a, b in zip(ref, drop):
        assert torch.allclose(a[batch.word_mask], b[batch.word_mask], atol=1e-5)
    out = Engine(model).run(batch, ExitConfig(policy="token", threshold=0.0, kv="drop"))
    assert torch.allclose(out.score[batch.word_mask], ref[-1].softmax(-1).max(-1).values[batch.word_mask], atol=1e-5)


def test_sample_exits_mixes_full_and_aggressive(tokenizer):
    model = tiny_model("bert", seed=3)
    windows, batch = windows_and_batch(tokenizer)
    cache = cache_layer_outputs(model, windows, 0)
    rng = random.Random(0)
    cfg = SamplingConfig(full_share=0.5, aggressive_share=0.0)
    exits = sample_exits(cache, list(range(len(windows))), batch.word_pos.shape[1], cfg, rng)
    full_rows = [(exits[i, : w.num_words] == model.num_layers - 1).all().item() for i, w in enumerate(windows)]
    assert sum(full_rows) >= 2
    probs = torch.tensor([[0.5, 0.5]])
    assert uncertainty(probs).item() == pytest.approx(1.0)
