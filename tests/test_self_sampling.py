"""Self-sampling: simulated exits equal the engine's, halted words leave the loss, kv=drop without exit is exact."""

from __future__ import annotations

import random

import pytest
import torch

from earlytag.data.batching import Featurizer, collate
from earlytag.defaults import HALTED_DEFAULT
from earlytag.engine import Engine, ExitConfig, simulate_exits
from earlytag.errors import ConfigError
from earlytag.model.heads import SoftmaxHead
from earlytag.train.self_sampling import LayerCache, SamplingConfig, cache_layer_outputs, sample_exits

from .conftest import tiny_model
from .test_engine import SENTENCES, mixed


def windows_and_batch(tokenizer, labels=False):
    feat = Featurizer(tokenizer, 128)
    lab = [[(i + j) % 5 for j in range(len(s))] for i, s in enumerate(SENTENCES)] if labels else None
    windows = feat.windows(SENTENCES, lab)
    return windows, collate(windows, feat.pad_id)


@pytest.mark.parametrize("family", ["bert", "mpnet"])
@pytest.mark.parametrize("kv", ["keep", "drop"])
@pytest.mark.parametrize("policy", ["token-rescore", "token-frozen", "patience"])
def test_simulated_exit_layers_equal_the_engines(tokenizer, family, kv, policy):
    """The simulator, fed the per-layer uncertainties the engine's policy saw, reproduces its exit layers."""
    model = tiny_model(family, seed=3)
    _, batch = windows_and_batch(tokenizer)
    cfg = {"token-rescore": lambda: mixed(model, batch, kv=kv, halted="rescore"), "token-frozen": lambda: mixed(model, batch, kv=kv,
           halted="frozen"), "patience": lambda: ExitConfig(policy="patience", patience=1, kv=kv)}[policy]()
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


def window_cache(num_layers=6, words=25, hard=10, copies=10):
    """Sentences whose exit layers reveal the sampled window: every word is sure (0.005) from layer 1 on, except
    one hard word that is unsure (1.0) below layer 4; words within k of it wait for it, the others leave at once."""
    unc = torch.full((num_layers, words), 0.005)
    unc[:3, hard] = 1.0
    pred = torch.zeros((num_layers, words), dtype=torch.long)
    return LayerCache([unc.clone() for _ in range(copies)], [pred] * copies, [None] * copies, 0.0)


def threshold_cache(copies=10):
    """Sentences whose exit layer reveals the sampled τ: all words 0.04 at layer 1, 0.02 at 2, 0.009 at 3."""
    unc = torch.tensor([[0.04] * 5, [0.02] * 5, [0.009] * 5, [0.0] * 5, [0.0] * 5, [0.0] * 5])
    pred = torch.zeros((6, 5), dtype=torch.long)
    return LayerCache([unc.clone() for _ in range(copies)], [pred] * copies, [None] * copies, 0.0)


def test_sampled_exits_follow_the_authors_recipe():
    """Windows, thresholds and the full/small shares, read back from exit layers that depend on the sample."""
    cfg = SamplingConfig()  # the authors': k in 2..7, τ from the set, 4 of 10 full, 2 of 10 smallest k or largest τ
    rng = random.Random(0)
    ks, full_rows = [], []
    for _ in range(300):
        exits = sample_exits(window_cache(), list(range(10)), 25, cfg, rng)
        full = (exits == 5).all(1)
        full_rows.append(int(full.sum()))
        for row in exits[~full]:
            held = int((row[:10] == 3).sum() + (row[11:] == 3).sum())  # words waiting for the hard one
            assert held % 2 == 0 and (row[[i for i in range(25) if i != 10]] != 3).sum() == 24 - held
            ks.append(held // 2)
    assert full_rows == [4] * 300  # exactly 4 of 10 at full depth, every batch
    counts = {k: ks.count(k) for k in set(ks)}
    assert set(counts) == {2, 3, 4, 5, 6, 7}
    # k=2 comes from 1/6 of the 4 sampled rows plus half of the 2 small rows: (4/6 + 1) of 6 non-full rows
    assert abs(counts[2] / len(ks) - (4 / 6 + 1) / 6) < 0.04
    taus = []
    for _ in range(300):
        exits = sample_exits(threshold_cache(), list(range(10)), 5, cfg, rng)
        for row in exits[~(exits == 5).all(1)]:
            taus.append(int(row[0]))  # 0: τ >= 0.05, 1: τ = 0.03, 2: τ = 0.01
    share = {layer: taus.count(layer) / len(taus) for layer in (0, 1, 2)}
    # sampled rows draw τ from 7 values (4 of them >= 0.05); half of the small rows take the largest τ (0.25)
    assert abs(share[2] - (4 * (1 / 7) + 1 * (1 / 7)) / 6) < 0.04
    assert abs(share[1] - share[2]) < 0.05 and share[0] > 0.65


def test_small_rows_take_both_extremes_with_rule_both():
    cfg = SamplingConfig(full_share=0.0, small_share=1.0, small_rule="both")
    exits = sample_exits(window_cache(), list(range(10)), 25, cfg, random.Random(1))
    held = ((exits[:, :10] == 3).sum(1) + (exits[:, 11:] == 3).sum(1))
    assert held.tolist() == [4] * 10  # k = 2 everywhere
    exits = sample_exits(threshold_cache(), list(range(10)), 5, cfg, random.Random(1))
    assert (exits == 0).all()  # τ = 0.25 everywhere


def test_a_halted_word_holds_its_neighbours_back_only_when_rescored():
    """Word 2 halts after layer 1 (its window 1..3 is sure there); at layer 2 its head is unsure again (0.8).
    With rescore (the paper) that keeps words 1 and 3, in its window, from halting at layer 2; frozen, it keeps
    the 0.0 it halted with and holds nobody back."""
    unc = torch.tensor([[[0.9, 0.9, 0.9, 0.9, 0.9],
                         [0.9, 0.0, 0.0, 0.0, 0.9],
                         [0.0, 0.0, 0.8, 0.0, 0.0],
                         [0.0, 0.0, 0.0, 0.0, 0.0]]])
    pred = torch.zeros(unc.shape, dtype=torch.long)
    mask = torch.ones((1, 5), dtype=torch.bool)
    base = dict(policy="token", threshold=0.5, window=1, upper_multiplier=1.0)
    assert simulate_exits(unc, pred, mask, ExitConfig(**base, halted="rescore")).tolist() == [[2, 3, 1, 3, 2]]
    assert simulate_exits(unc, pred, mask, ExitConfig(**base, halted="frozen")).tolist() == [[2, 2, 1, 2, 2]]


def test_layer_loss_batch_sum_and_token_flooding_by_hand():
    torch.manual_seed(0)
    logits = [torch.randn(2, 3, 4) for _ in range(3)]  # 3 layers, 2 sentences of up to 3 words, 4 labels
    labels = torch.tensor([[0, 1, 2], [3, 0, -100]])
    word_exit = torch.tensor([[0, 2, 1], [2, 0, 2]])
    ce = torch.stack([torch.nn.functional.cross_entropy(lg.flatten(0, 1), labels.flatten().clamp(min=0),
                                                        reduction="none").view(2, 3) for lg in logits])  # (L, B, W)
    real = labels != -100
    active = torch.stack([(word_exit >= layer) & real for layer in range(3)])
    loss, layer_losses = SoftmaxHead().loss(logits, labels, word_exit, reduction="batch-sum")
    expected_layers = torch.stack([(ce[layer] * active[layer]).sum() / real.sum() for layer in range(3)])
    assert torch.allclose(layer_losses, expected_layers)
    assert torch.allclose(loss, (expected_layers * torch.tensor([1.0, 2.0, 3.0])).sum() / 6)
    mean_loss, mean_layers = SoftmaxHead().loss(logits, labels, word_exit, reduction="active-mean")
    assert torch.allclose(mean_layers, torch.stack([(ce[i] * active[i]).sum() / active[i].sum() for i in range(3)]))
    level = torch.rand(2, 3, 3)  # (B, L, W)
    flooded, flooded_layers = SoftmaxHead().loss(logits, labels, word_exit, reduction="batch-sum", flood=level)
    lv = level.permute(1, 0, 2)  # (L, B, W)
    by_hand = torch.stack([(((ce[i] - lv[i]).abs() + lv[i]) * active[i]).sum() / real.sum() for i in range(3)])
    assert torch.allclose(flooded_layers, by_hand)


def test_joint_loss_weighting_by_hand():
    """Stage 1: Σ_l (l+1)·CE_l / Σ_l (l+1) with CE_l the mean over all words."""
    torch.manual_seed(1)
    logits = [torch.randn(2, 4, 5) for _ in range(4)]
    labels = torch.tensor([[0, 1, 2, 3], [4, 0, -100, -100]])
    ce = [torch.nn.functional.cross_entropy(lg.flatten(0, 1), labels.flatten(), ignore_index=-100) for lg in logits]
    expected = sum((i + 1) * c for i, c in enumerate(ce)) / (1 + 2 + 3 + 4)
    for reduction in ("active-mean", "batch-sum"):
        loss, _ = SoftmaxHead().loss(logits, labels, reduction=reduction)
        assert torch.allclose(loss, expected)
        # --layer-weights uniform: every layer alike, the plain mean of the layers' losses
        loss, _ = SoftmaxHead().loss(logits, labels, reduction=reduction, weights="uniform")
        assert torch.allclose(loss, sum(ce) / 4)
        assert not torch.allclose(loss, expected)
    with pytest.raises(ConfigError, match="layer_weights"):
        SoftmaxHead().loss(logits, labels, weights="linear")


def test_crf_joint_loss_takes_the_layer_weights():
    """The CRF head weighs its per-layer losses the same way: uniform is the plain mean of its layer losses,
    depth the (l+1)-weighted one."""
    from earlytag.model.heads import CRFHead

    torch.manual_seed(2)
    head = CRFHead(["O", "B-PER", "I-PER"], "ner", "iob2", 3)
    logits = [torch.randn(2, 4, 3) for _ in range(3)]
    labels = torch.tensor([[0, 1, 2, 0], [1, 2, -100, -100]])
    depth, layers = head.loss(logits, labels)
    uniform, same_layers = head.loss(logits, labels, weights="uniform")
    assert torch.allclose(layers, same_layers)
    assert torch.allclose(uniform, layers.mean())
    assert torch.allclose(depth, (layers * torch.tensor([1.0, 2.0, 3.0])).sum() / 6)


def test_layer_weights_reach_the_loss_from_the_command_line(tmp_path, tokenizer, shared_data, monkeypatch):
    """``earlytag train --layer-weights uniform`` is parsed into the config, refused when unknown (the field
    named), and what the training loss really received (spied) is that setting."""
    from earlytag import Tagger
    from earlytag.cli import build_parser
    from earlytag.model import heads
    from earlytag.train.trainer import TrainConfig, train

    args = build_parser().parse_args(["train", "--train", "t", "--output", "o", "--layer-weights", "uniform"])
    assert args.layer_weights == "uniform"
    assert build_parser().parse_args(["train", "--train", "t", "--output", "o"]).layer_weights == "depth"
    with pytest.raises(ConfigError, match="layer_weights"):
        TrainConfig(train="x", output="y", layer_weights="linear").validate()
    seen = []
    real = heads.layer_weighted
    monkeypatch.setattr(heads, "layer_weighted", lambda *a: seen.append(a[4]) or real(*a))
    init = tmp_path / "stage1"
    Tagger(tiny_model("bert", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"), seed=3),
           tokenizer).save_pretrained(init)
    train(TrainConfig(train="uner-en-ewt:train", output=str(tmp_path / "out"), task="ner", stage="self-sampling",
                      init=str(init), train_limit=16, epochs=1, freeze_epochs=0, batch_size=8, progress=False,
                      layer_weights="uniform", data_dir=str(shared_data)))
    assert seen and set(seen) == {"uniform"}


def test_self_sampling_trains_end_to_end_and_honours_freezing(tmp_path, tokenizer, shared_data):
    from earlytag import Tagger
    from earlytag.train.trainer import TrainConfig, train

    init = tmp_path / "stage1"
    Tagger(tiny_model("bert", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"), seed=3),
           tokenizer).save_pretrained(init)
    common = dict(train="uner-en-ewt:train", dev="uner-en-ewt:dev", task="ner", stage="self-sampling", init=str(init),
                  train_limit=64, dev_limit=24, batch_size=16, lr=1e-3, head_lr=1e-2, progress=False,
                  data_dir=str(shared_data))
    log = train(TrainConfig(output=str(tmp_path / "frozen"), epochs=1, freeze_epochs=1, **common))
    assert log["epochs"][0]["encoder_frozen"] and log["recipe"]["flooding"] == "token"
    before, after = Tagger.from_pretrained(init).model, Tagger.from_pretrained(tmp_path / "frozen").model
    assert all(torch.equal(a, b) for a, b in zip(before.encoder.state_dict().values(),
                                                 after.encoder.state_dict().values()))  # frozen: untouched
    assert not torch.equal(before.heads[0].linear.weight, after.heads[0].linear.weight)
    log = train(TrainConfig(output=str(tmp_path / "trained"), epochs=2, freeze_epochs=1, **common))
    assert [e["encoder_frozen"] for e in log["epochs"]] == [True, False]
    assert "dev_exit_score" in log["epochs"][-1] and log["epochs"][-1]["dev_exit"]["halted"] == HALTED_DEFAULT
    trained = Tagger.from_pretrained(tmp_path / "trained")
    assert not torch.equal(before.encoder.embeddings.word_embeddings.weight,
                           trained.model.encoder.embeddings.word_embeddings.weight)
    doc = trained("Angela Merkel visited Paris.", exit={"policy": "token", "threshold": 0.2})
    assert len(doc["tokens"]) == 5


def test_self_distillation_by_hand():
    """``--distill``: per lower layer the mean over labelled words of T²·KL(p_last ‖ p_l) (as torch's kl_div
    computes it), weighted over layers like the joint loss; the last head is a teacher (no gradient reaches it),
    and a lower head that already says what the last one says costs nothing."""
    from earlytag.model.heads import self_distillation

    torch.manual_seed(4)
    logits = [torch.randn(2, 4, 5, requires_grad=True) for _ in range(4)]
    labels = torch.tensor([[0, 1, 2, 3], [4, 0, -100, -100]])
    keep = (labels != -100).flatten()
    for temperature in (1.0, 2.0):
        teacher = torch.softmax(logits[-1].flatten(0, 1)[keep] / temperature, -1)
        kl = [torch.nn.functional.kl_div(torch.log_softmax(lg.flatten(0, 1)[keep] / temperature, -1), teacher,
                                         reduction="batchmean") * temperature ** 2 for lg in logits[:-1]]
        depth = self_distillation(logits, labels, temperature)
        assert torch.allclose(depth, (kl[0] + 2 * kl[1] + 3 * kl[2]) / 6)
        assert torch.allclose(self_distillation(logits, labels, temperature, "uniform"), sum(kl) / 3)
    depth.backward()
    assert logits[-1].grad is None or not logits[-1].grad.any()
    assert logits[0].grad.abs().sum() > 0
    same = [logits[-1].detach() + 3.0] * 3 + [logits[-1].detach()]  # a constant shift: the same softmax
    assert self_distillation(same, labels).abs() < 1e-6
    with pytest.raises(ConfigError, match="distill_temperature"):
        self_distillation(logits, labels, 0.0)


def test_distill_adds_to_the_joint_loss_and_reaches_it_from_the_command_line(capsys, tmp_path, tiny_encoder_dirs,
                                                                             shared_data, monkeypatch):
    """The forward's loss is the joint loss + α·distillation (the term returned apart); a CRF head and
    self-sampling refuse it; ``earlytag train --distill 0.5 --distill-temperature 2`` trains with exactly
    that (spied on what the model really computed) and logs the term per epoch."""
    from earlytag.cli import build_parser, main
    from earlytag.model import tagger as tagger_module
    from earlytag.train.trainer import TrainConfig

    model = tiny_model("bert", labels=("O", "B-PER", "I-PER"), seed=5).eval()
    ids = torch.tensor([[101, 2000, 2001, 2002, 102]])
    mask = torch.ones_like(ids)
    word_pos = torch.tensor([[1, 2, 3]])
    labels = torch.tensor([[0, 1, 2]])
    plain = model(ids, mask, word_pos, labels=labels)
    both = model(ids, mask, word_pos, labels=labels, distill=0.5, distill_temperature=2.0)
    assert plain.distill_loss is None and both.distill_loss > 0
    assert torch.allclose(both.loss, plain.loss + 0.5 * both.distill_loss)
    with pytest.raises(ConfigError, match="distill"):
        model(ids, mask, word_pos, labels=labels, distill=0.5, word_exit=torch.tensor([[0, 1, 2]]),
              token_word=torch.tensor([[-1, 0, 1, 2, -1]]))
    for bad in (dict(distill=-1.0), dict(distill=0.5, distill_temperature=0.0), dict(distill=0.5, head="crf"),
                dict(distill=0.5, stage="self-sampling", init="m")):
        with pytest.raises(ConfigError, match="distill"):
            TrainConfig(train="x", output="y", **bad).validate()
    assert build_parser().parse_args(["train", "--train", "t", "--output", "o"]).distill == 0.0

    seen = []
    real = tagger_module.self_distillation
    monkeypatch.setattr(tagger_module, "self_distillation", lambda *a: seen.append(a[2:]) or real(*a))
    out_dir = str(tmp_path / "distilled")
    assert main(["train", "--task", "ner", "--train", "uner-en-ewt:train", "--dev", "uner-en-ewt:dev",
                 "--encoder", str(tiny_encoder_dirs["bert"]), "--output", out_dir, "--epochs", "1", "--freeze-epochs", "0",
                 "--train-limit", "32", "--dev-limit", "16", "--batch-size", "16", "--distill", "0.5",
                 "--distill-temperature", "2", "--layer-weights", "uniform", "--data-dir", str(shared_data),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert seen and set(seen) == {(2.0, "uniform")}
    import json
    log = json.loads((tmp_path / "distilled" / "training_log.json").read_text())
    assert log["config"]["distill"] == 0.5 and log["epochs"][0]["distill_loss"] > 0


def test_teacher_distillation_by_hand():
    """``--teacher``: every head (the last one too) pulled towards another model's softmax: per layer the mean over
    labelled words of T²·KL(p_teacher ‖ p_l) (as torch's kl_div computes it), weighted over layers like the joint
    loss; no gradient reaches the teacher, and heads that already say what it says cost nothing."""
    from earlytag.model.heads import distillation

    torch.manual_seed(7)
    logits = [torch.randn(2, 4, 5, requires_grad=True) for _ in range(3)]
    teacher = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.tensor([[0, 1, 2, 3], [4, 0, -100, -100]])
    keep = (labels != -100).flatten()
    for temperature in (1.0, 2.0):
        target = torch.softmax(teacher.flatten(0, 1)[keep] / temperature, -1)
        kl = [torch.nn.functional.kl_div(torch.log_softmax(lg.flatten(0, 1)[keep] / temperature, -1), target,
                                         reduction="batchmean") * temperature ** 2 for lg in logits]
        depth = distillation(logits, teacher, labels, temperature)
        assert torch.allclose(depth, (kl[0] + 2 * kl[1] + 3 * kl[2]) / 6)
        assert torch.allclose(distillation(logits, teacher, labels, temperature, "uniform"), sum(kl) / 3)
    depth.backward()
    assert teacher.grad is None
    assert all(lg.grad.abs().sum() > 0 for lg in logits)
    assert distillation([teacher.detach() - 2.0] * 3, teacher, labels).abs() < 1e-6
    with pytest.raises(ConfigError, match="distill_temperature"):
        distillation(logits, teacher, labels, -1.0)


def test_teacher_reaches_every_head_from_the_command_line(capsys, tmp_path, tiny_encoder_dirs, shared_data,
                                                          monkeypatch):
    """``earlytag train --teacher DIR --teacher-weight 0.7 --teacher-temperature 3`` (here with --slim, its use):
    the term is computed on the teacher's real last-head logits for the batch (recorded as the trainer computed
    them and recomputed here from the saved teacher), in the student's label order, over every head of the
    student, and logged; the model's card records the teacher. A teacher with other labels, or one that splits
    words with another tokenizer (a cased copy of the uncased one), stops training with the reason; bad settings
    are refused."""
    import json

    from earlytag import Tagger
    from earlytag.cli import main
    from earlytag.train import trainer as trainer_module
    from earlytag.train.trainer import TrainConfig

    base = ["train", "--task", "ner", "--train", "uner-en-ewt:train", "--dev", "uner-en-ewt:dev", "--epochs", "1",
            "--freeze-epochs", "0", "--train-limit", "32", "--dev-limit", "16", "--batch-size", "16",
            "--data-dir", str(shared_data), "--quiet"]
    teacher_dir = tmp_path / "teacher"
    assert main([*base, "--encoder", str(tiny_encoder_dirs["bert"]), "--output", str(teacher_dir)]) == 0
    seen, computed = [], []
    real_logits, real_kd = trainer_module._Teacher.logits, trainer_module.distillation

    def logits(self, batch):
        out = real_logits(self, batch)
        computed.append((batch, out))
        return out

    monkeypatch.setattr(trainer_module._Teacher, "logits", logits)
    monkeypatch.setattr(trainer_module, "distillation", lambda *a: seen.append(a) or real_kd(*a))
    student_dir = tmp_path / "student"
    assert main([*base, "--encoder", str(tiny_encoder_dirs["mpnet"]), "--output", str(student_dir), "--teacher",
                 str(teacher_dir), "--teacher-weight", "0.7", "--teacher-temperature", "3", "--slim",
                 "heads=0.5,ffn=0.5", "--slim-check-every", "1"]) == 0
    capsys.readouterr()
    assert len(seen) == len(computed) == 2  # 32 sentences in batches of 16
    teacher = Tagger.from_pretrained(str(teacher_dir)).model.eval()
    depth = Tagger.from_pretrained(str(student_dir)).model.num_layers
    for (batch, out), args in zip(computed, seen):
        student_logits, target, labels, temperature, weights = args
        assert target is out and temperature == 3.0 and weights == "depth" and labels is batch.labels
        assert len(student_logits) == depth  # every head of the student
        with torch.no_grad():
            again = teacher(batch.input_ids, batch.attention_mask, batch.word_pos).logits[-1]
        assert torch.allclose(out, again, atol=1e-5)
    log = json.loads((student_dir / "training_log.json").read_text())
    assert log["config"]["teacher"] == str(teacher_dir) and log["config"]["teacher_weight"] == 0.7
    assert log["epochs"][0]["teacher_loss"] > 0
    assert json.loads((student_dir / "config.json").read_text())["earlytag"]["training"]["teacher"] == str(teacher_dir)

    # another label set: a teacher trained on PER alone
    per_dir = tmp_path / "teacher-per"
    assert main([*base, "--encoder", str(tiny_encoder_dirs["bert"]), "--output", str(per_dir), "--types", "PER"]) == 0
    capsys.readouterr()
    assert main([*base, "--encoder", str(tiny_encoder_dirs["bert"]), "--output", str(tmp_path / "x"), "--teacher",
                 str(per_dir)]) == 2
    assert "teacher" in (err := capsys.readouterr().err) and "needs the same labels" in err
    # another tokenizer: the teacher's copy made cased
    cased = tmp_path / "teacher-cased"
    cased.mkdir()
    for f in teacher_dir.iterdir():
        (cased / f.name).write_bytes(f.read_bytes())
    for name, path in (("tokenizer.json", ("normalizer", "lowercase")), ("tokenizer_config.json", ("do_lower_case",))):
        tok = json.loads((cased / name).read_text())
        *outer, key = path
        node = tok
        for k in outer:
            node = node[k]
        assert node[key] is True
        node[key] = False
        (cased / name).write_text(json.dumps(tok))
    assert main([*base, "--encoder", str(tiny_encoder_dirs["bert"]), "--output", str(tmp_path / "y"), "--teacher",
                 str(cased)]) == 2
    assert "another tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    for bad in (dict(teacher_weight=-1.0), dict(teacher_temperature=0.0), dict(head="crf"),
                dict(stage="self-sampling", init="m")):
        with pytest.raises(ConfigError, match="teacher"):
            TrainConfig(train="x", output="y", teacher="t", **bad).validate()
