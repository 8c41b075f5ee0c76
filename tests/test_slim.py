"""Structured slimming (EarlyBERT): the slim model computes what the masked model computed, sizes follow the
ratios, save/load keeps it slim, and the engine, the FLOPs count, every policy and precision run on it."""

from __future__ import annotations

import pytest
import torch

from earlytag import Tagger
from earlytag.engine import Engine, ExitConfig
from earlytag.errors import ConfigError
from earlytag.model.slim import Coefficients, EarlyBird, SlimSpec, mask_distance, prune_encoder

from .conftest import tiny_model
from .test_engine import SENTENCES, batch_of
from .test_precision import POLICY_SETTINGS

SPEC = SlimSpec(heads=0.5, ffn=0.25)


def searched(family: str, seed: int = 0):
    """A tiny model with coefficients as a search leaves them: random, some near zero."""
    model = tiny_model(family, seed=seed)
    coefs = Coefficients(model.adapter)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        coefs.head.copy_(torch.rand(coefs.head.shape, generator=g) * 2)
        coefs.ffn.copy_(torch.rand(coefs.ffn.shape, generator=g) * 2)
    return model, coefs


def logits_of(model, batch):
    with torch.no_grad():
        return model(batch.input_ids, batch.attention_mask, batch.word_pos).logits


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_slim_forward_equals_the_masked_forward(tokenizer, family):
    model, coefs = searched(family)
    batch = batch_of(tokenizer, SENTENCES)
    keep_h, keep_f = coefs.masks(SPEC)
    with torch.no_grad():  # the masked model: pruned coefficients set to 0, the others as searched
        coefs.head.mul_(keep_h)
        coefs.ffn.mul_(keep_f)
    masked = logits_of(model, batch)
    unmasked_check = [x.clone() for x in masked]
    coefs.detach_hooks()
    assert not torch.allclose(logits_of(model, batch)[-1], unmasked_check[-1], atol=1e-4)  # the hooks mattered
    record = prune_encoder(model.encoder, model.adapter, keep_h, keep_f, coefs)
    from earlytag.model.adapters import adapter_for

    model.adapter = adapter_for(model.encoder)
    slim = logits_of(model, batch)
    for a, b in zip(masked, slim):
        assert torch.allclose(a, b, atol=1e-5)
    heads, width = model.encoder.config.num_attention_heads, model.encoder.config.intermediate_size
    assert [len(h) for h in record["heads"]] == [round(heads * 0.5)] * model.num_layers
    assert record["ffn"] == [round(width * 0.75)] * model.num_layers
    for parts, kept in zip(model.adapter.layers, record["heads"]):
        assert parts.query.weight.shape[0] == len(kept) * (model.adapter.hidden_size // heads)
        assert parts.head_index.tolist() == kept == sorted(kept)
    # the engine on the slim model: at threshold 0 it is the slim model's own full depth
    for cfg in (ExitConfig(), ExitConfig(policy="token", threshold=0.0)):
        for dense_above in (0.0, 2.0):
            out = Engine(model, dense_above=dense_above).run(batch, cfg)
            probs = slim[-1].softmax(-1)
            assert torch.allclose(out.score[batch.word_mask], probs.max(-1).values[batch.word_mask], atol=1e-5)


def test_flops_count_the_slim_sizes(tokenizer):
    model, coefs = searched("bert")
    batch = batch_of(tokenizer, SENTENCES)
    full = Engine(model).run(batch, ExitConfig()).stats.flops
    keep_h, keep_f = coefs.masks(SPEC)
    prune_encoder(model.encoder, model.adapter, keep_h, keep_f, coefs)
    from earlytag.model.adapters import adapter_for

    model.adapter = adapter_for(model.encoder)
    stats = Engine(model).run(batch, ExitConfig()).stats
    d, f, c = 32, 64, 5
    n = batch.attention_mask.sum(1).double()
    da, fs = 16, 48  # half the heads, three quarters of the FFN

    def per_layer(d_attn, ffn):
        return (4 * n * d * d_attn + 4 * n * d * d_attn + 4 * n * d * ffn + 4 * n * n * d_attn).sum()

    words = batch.word_mask.sum()
    assert stats.flops == pytest.approx(float(3 * per_layer(da, fs) + words * 2 * d * c))
    assert full == pytest.approx(float(3 * per_layer(d, f) + words * 2 * d * c))
    assert stats.flops_full == stats.flops


def test_save_load_keeps_the_model_slim_and_runs_every_policy_and_precision(tokenizer, tmp_path):
    model, coefs = searched("mpnet", seed=2)
    keep_h, keep_f = coefs.masks(SPEC)
    record = prune_encoder(model.encoder, model.adapter, keep_h, keep_f, coefs)
    from earlytag.model.adapters import adapter_for

    model.adapter = adapter_for(model.encoder)
    model.config.slim = record
    tagger = Tagger(model, tokenizer)
    tagger.save_pretrained(tmp_path / "slim")
    again = Tagger.from_pretrained(tmp_path / "slim")
    assert again.config.slim == record
    assert sum(p.numel() for p in again.model.encoder.parameters()) < sum(
        p.numel() for p in tiny_model("mpnet").encoder.parameters())
    for cfg in POLICY_SETTINGS:
        assert list(tagger.pipe(SENTENCES, exit=cfg)) == list(again.pipe(SENTENCES, exit=cfg))
    for precision in ("bf16", "int8"):
        low = Tagger.from_pretrained(tmp_path / "slim", precision=precision)
        docs = list(low.pipe(SENTENCES, exit={"policy": "token", "threshold": 0.3}))
        assert [len(d["tokens"]) for d in docs] == [len(s) for s in SENTENCES]


def test_early_bird_draws_when_the_mask_stops_changing():
    model, coefs = searched("bert")
    bird = EarlyBird(SPEC, eps=0.1, patience=2)
    assert not bird.check(coefs)  # the first mask: nothing to compare with
    assert not bird.check(coefs) and bird.distances == [0.0]
    with torch.no_grad():
        coefs.head.copy_(coefs.head.flip(1))  # the order of heads and neurons changes: a large distance
        coefs.ffn.copy_(coefs.ffn.flip(1))
    assert not bird.check(coefs) and bird.distances[-1] > 0.1
    assert not bird.check(coefs)  # one calm check after the change is not yet enough
    assert bird.check(coefs)
    a = (torch.tensor([[True, False]]), torch.tensor([[True, True, False, False]]))
    b = (torch.tensor([[False, True]]), torch.tensor([[True, True, False, False]]))
    assert mask_distance(a, b) == pytest.approx(2 / 6)


def test_early_bird_with_a_span_compares_masks_that_many_checks_apart():
    """span=2: each distance is between a check's mask and the mask two checks before it, so a mask that moves a
    little at every check adds up; a distance is logged from the third check on."""
    model, coefs = searched("bert")
    h = coefs.head.shape[1]
    bird = EarlyBird(SlimSpec(heads=0.5), eps=0.2, patience=1, span=2)
    seen = []
    for shift in range(4):  # head scores rotate by one place per check: the kept half moves by one head
        with torch.no_grad():
            coefs.head.copy_(torch.arange(h, dtype=torch.float).roll(shift).expand_as(coefs.head))
        drawn = bird.check(coefs)
        seen.append(coefs.masks(bird.spec))
        assert not drawn or len(bird.distances) >= 1
    assert len(bird.distances) == 2  # checks 3 and 4
    assert bird.distances == [pytest.approx(mask_distance(seen[0], seen[2])),
                              pytest.approx(mask_distance(seen[1], seen[3]))]
    step = EarlyBird(SlimSpec(heads=0.5), eps=0.2, patience=1)  # the same masks one check apart: half the change
    for shift in range(2):
        with torch.no_grad():
            coefs.head.copy_(torch.arange(h, dtype=torch.float).roll(shift).expand_as(coefs.head))
        step.check(coefs)
    assert 0 < step.distances[0] < bird.distances[0]
    with pytest.raises(ConfigError, match="slim_span"):
        EarlyBird(SPEC, span=0)


def test_slim_span_must_be_a_multiple_of_the_check_interval():
    from earlytag.train.trainer import TrainConfig

    TrainConfig(train="-", output="-", slim="heads=0.33", slim_check_every=10, slim_span=50).validate()
    with pytest.raises(ConfigError, match="slim_span"):
        TrainConfig(train="-", output="-", slim="heads=0.33", slim_check_every=10, slim_span=45).validate()


@pytest.mark.parametrize("text, message", [("heads=1.0", "must be in"), ("heads=x", "not a number"),
                                           ("layers=0.3", "expected heads=R"), ("heads=0,ffn=0", "nothing")])
def test_bad_slim_settings(text, message):
    with pytest.raises(ConfigError, match=message):
        SlimSpec.parse(text)
    assert SlimSpec.parse("heads=0.33,ffn=0.4") == SlimSpec(0.33, 0.4)


def test_magnitude_pruning_keeps_the_largest_weights(tokenizer, tmp_path):
    from earlytag.model.slim import magnitude_masks, prune_model

    model = tiny_model("bert", seed=4)
    with torch.no_grad():  # head 2 of layer 0 and neuron 7 of layer 1 made far larger than the rest
        parts = model.adapter.layers
        parts[0].attn_out.weight[:, 16:24].mul_(100)
        parts[1].ffn_in.weight[7].mul_(100)
    keep_h, keep_f = magnitude_masks(model.adapter, SlimSpec(heads=0.75, ffn=0.9))
    assert keep_h.sum(1).tolist() == [1, 1, 1] and keep_h[0].nonzero().squeeze(1).tolist() == [2]
    assert keep_f[1, 7] and keep_f.sum(1).tolist() == [6, 6, 6]
    record = prune_model(model, SlimSpec(heads=0.75, ffn=0.9))
    assert record["heads"][0] == [2] and model.config.slim == record
    Tagger(model, tokenizer).save_pretrained(tmp_path / "m")
    assert Tagger.from_pretrained(tmp_path / "m").config.slim == record


def test_bench_against_the_unpruned_reference(tokenizer, tmp_path, shared_data):
    from earlytag.bench import BenchConfig, run_bench
    from earlytag.model.slim import prune_model

    full = Tagger(tiny_model("bert", seed=5, labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")),
                  tokenizer)
    full.save_pretrained(tmp_path / "full")
    slim = Tagger.from_pretrained(tmp_path / "full")
    prune_model(slim.model, SlimSpec(heads=0.5, ffn=0.5))
    slim.save_pretrained(tmp_path / "slim")
    result = run_bench(BenchConfig(model=str(tmp_path / "slim"), data="uner-en-ewt:dev", out=str(tmp_path / "b"),
                                   batch_sizes=[4], policies=["token"], repeats=1, limit=24, timing_limit=24,
                                   grid="small", data_dir=str(shared_data), progress=False,
                                   reference=str(tmp_path / "full")))
    rows = result["rows"]
    own_full = next(r for r in rows if r["policy"] == "none")
    ref = next(r for r in rows if r["policy"] == "reference")
    assert ref["flops_speedup"] == 1.0 and ref["wall_speedup"] == 1.0
    # the slim model's full depth against the unpruned one's: the ratio of their analytic FLOPs
    d = 32
    per_token_full = 4 * d * d * 2 + 4 * d * 64
    per_token_slim = 4 * d * 16 * 2 + 4 * d * 32
    assert 1.0 < own_full["flops_speedup"] < per_token_full / per_token_slim * 1.01
    assert own_full["flops_speedup_own"] == 1.0 and own_full["wall_speedup"] is not None
    token = [r for r in rows if r["policy"] == "token"]
    assert all(r["flops_speedup"] == pytest.approx(r["flops_speedup_own"] * own_full["flops_speedup"]) for r in token)
    assert result["meta"]["reference"] == str(tmp_path / "full")


def test_self_sampling_runs_on_a_slim_model_unchanged(tiny_encoder_dirs, shared_data, tmp_path):
    from earlytag.train.trainer import TrainConfig, train

    common = dict(train="uner-en-ewt:train", task="ner", epochs=1, batch_size=16, train_limit=48, progress=False,
                  data_dir=str(shared_data))
    train(TrainConfig(output=str(tmp_path / "slim"), encoder=str(tiny_encoder_dirs["bert"]), freeze_epochs=0,
                      slim="heads=0.5,ffn=0.5", slim_check_every=1, slim_max_steps=2, **common))
    stage1 = Tagger.from_pretrained(tmp_path / "slim")
    with pytest.raises(ConfigError, match="slim"):
        TrainConfig(output=str(tmp_path / "x"), stage="self-sampling", init=str(tmp_path / "slim"),
                    slim="heads=0.5", **common).validate()
    log = train(TrainConfig(output=str(tmp_path / "ss"), stage="self-sampling", init=str(tmp_path / "slim"),
                            freeze_epochs=0, **common))
    stage2 = Tagger.from_pretrained(tmp_path / "ss")
    assert stage2.config.slim == stage1.config.slim and log["epochs"]
    assert [p.num_heads for p in stage2.model.adapter.layers] == [2, 2, 2]
