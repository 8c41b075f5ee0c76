"""The CLI verbs end to end on a tiny model; bad input gives one line naming the file/line, never a traceback,
and no half-written output."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from earlytag import Tagger
from earlytag.cli import main
from earlytag.engine import ExitConfig
from earlytag.errors import ConfigError

from .conftest import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("cli") / "model"
    tagger = Tagger(tiny_model("bert", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")),
                    tokenizer)
    tagger.model.config.training = {"dev": "uner-en-ewt:dev"}
    tagger.save_pretrained(path)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def shown(err: str) -> list[str]:
    """The lines a terminal ends up showing (a progress bar redraws its line with carriage returns)."""
    return [line.rsplit("\r", 1)[-1] for line in err.split("\n") if line.rsplit("\r", 1)[-1].strip()]


def test_train_evaluate_predict(capsys, tmp_path, tiny_encoder_dirs, shared_data):
    out_dir = tmp_path / "m"
    code, out, err = run(capsys, "train", "--train", "uner-en-ewt:train", "--dev", "uner-en-ewt:dev", "--task", "ner",
                         "--encoder", tiny_encoder_dirs["bert"], "--output", out_dir, "--epochs", 1,
                         "--train-limit", 64, "--dev-limit", 32, "--quiet", "--data-dir", shared_data)
    assert code == 0, err
    assert json.loads(out)["output"] == str(out_dir)

    metrics = tmp_path / "metrics.json"
    code, out, err = run(capsys, "evaluate", out_dir, "uner-en-ewt:dev", "--json", metrics, "--exit", "token",
                         "--threshold", "0.2", "--window", "1", "--per-layer")
    assert code == 0, err
    assert "every exit head" in out
    result = json.loads(metrics.read_text())
    for key in ("f1", "precision", "recall", "accuracy", "per_type", "per_layer", "sentences", "tokens", "seconds",
                "exit", "flops_speedup", "mean_exit_layer", "inference_seconds"):
        assert key in result
    assert result["sentences"] == 2001 and result["exit"]["window"] == 1

    code, out, _ = run(capsys, "evaluate", out_dir, "uner-en-ewt:dev", "--layer", 1, "--json", "-")
    assert code == 0
    assert '"policy": "static"' in out and "every exit head" not in out  # the table is opt-in
    # full depth: the table of every exit head comes from the same pass, and agrees with the engine's own run
    code, out, _ = run(capsys, "evaluate", out_dir, "uner-en-ewt:dev", "--exit", "none", "--per-layer", "--json", "-")
    full = json.loads(out[out.index('{\n  "'):])
    assert full["per_layer"][-1]["f1"] == full["f1"] and full["flops_speedup"] == 1.0
    engine = Tagger.from_pretrained(out_dir).evaluate("uner-en-ewt:dev", exit="none")
    assert engine["f1"] == full["f1"] and engine["stats"]["flops_full"] == pytest.approx(full["stats"]["flops_full"])


def test_predict_jsonl_offsets(capsys, model_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 7, "text": "Angela  Merkel visited Paris."}) + "\n"
                   + json.dumps({"tokens": ["New", "York"]}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "predict", model_dir, src, "--output", out, "--exit", "token", "--threshold", "0.3")
    assert code == 0, err
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert docs[0]["id"] == 7
    assert [t["text"] for t in docs[0]["tokens"]] == ["Angela", "Merkel", "visited", "Paris", "."]
    for doc in docs:
        for tok in doc["tokens"]:
            assert doc["text"][tok["start"]:tok["end"]] == tok["text"]
            assert {"tag", "score", "exit_layer"} <= set(tok)
    assert docs[1]["text"] == "New York"
    summary = shown(err)[-1]
    assert summary.startswith("tagged 2 documents: FLOPs speed-up")
    assert json.loads(summary[summary.index("(") + 1:-1])["documents"] == 2


def test_predict_stdin_and_conll(capsys, model_dir, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Hello Paris\n\nBye\n")))
    code, out, _ = run(capsys, "predict", model_dir, "-", "--format", "conll")
    assert code == 0
    blocks = out.split("\n\n")
    assert [line.split("\t")[0] for line in blocks[0].splitlines()] == ["Hello", "Paris"]
    assert "\n\n\nBye\t" in out  # the empty line is an empty sentence: one more blank line, outputs aligned


def test_every_input_line_gets_one_record_in_order(capsys, model_dir, tmp_path):
    """Outputs stay aligned with inputs: empty and spaces-only lines give empty documents, each with its index;
    the service answers an empty text the same way."""
    src = tmp_path / "in.txt"
    src.write_text("Angela Merkel visited Paris.\n\n   \nHello there\nx\n\n", encoding="utf-8")
    code, out, err = run(capsys, "predict", model_dir, src)
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["index"] for d in docs] == [0, 1, 2, 3, 4, 5]
    assert [d["line"] for d in docs] == [1, 2, 3, 4, 5, 6]
    assert [d["text"] for d in docs] == ["Angela Merkel visited Paris.", "", "   ", "Hello there", "x", ""]
    assert docs[1]["tokens"] == [] and docs[2]["spans"] == []
    assert "tagged 6 documents" in err  # the summary, on standard error, also when the output is stdout
    code, out, err = run(capsys, "predict", model_dir, src, "--quiet")
    assert err == "" and len(out.splitlines()) == 6
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"id": "a", "text": "Paris"}\n\n{"id": "c", "tokens": ["New", "York"]}\n', encoding="utf-8")
    code, out, err = run(capsys, "predict", model_dir, jsonl)
    docs = [json.loads(line) for line in out.splitlines()]
    assert [(d["index"], d.get("id")) for d in docs] == [(0, "a"), (1, None), (2, "c")]
    from fastapi.testclient import TestClient

    from earlytag.serve.app import create_app

    with TestClient(create_app(str(model_dir), load_in_background=False)) as client:
        while client.get("/ready").status_code != 200:
            pass
        body = client.post("/predict", json={"texts": ["Paris", "", "   "]}).json()
    assert [d["tokens"] == [] for d in body["results"]] == [False, True, True]


@pytest.mark.parametrize("content, fragment", [
    ('{"text": "ok"}\n{"txt": "x"}\n', "in.jsonl:2: expected a 'text' or 'tokens' field"),
    ('{"text": "ok"}\n{"text": \n', "in.jsonl:2: invalid JSON"),
    (b"fine\n\xff\n", "in.txt:2: not valid UTF-8"),
])
def test_predict_bad_input_is_one_line_and_leaves_no_file(capsys, model_dir, tmp_path, content, fragment):
    name = "in.txt" if isinstance(content, bytes) else "in.jsonl"
    src = tmp_path / name
    src.write_bytes(content) if isinstance(content, bytes) else src.write_text(content)
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "predict", model_dir, src, "--output", out)
    assert code == 2
    lines = shown(err)
    assert len(lines) == 1 and lines[0].startswith("earlytag: error: ") and fragment in lines[0]
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


@pytest.mark.parametrize("argv, fragment", [
    (["evaluate", "{model}", "{tmp}/missing.conll"], "missing.conll: no such file"),
    (["evaluate", "{tmp}", "uner-en-ewt:dev"], "not an earlytag model directory"),
    (["evaluate", "{model}", "uner-en-ewt:dev", "--exit", "token"], "exit.threshold: the token policy needs a threshold"),
    (["evaluate", "{model}", "uner-en-ewt:dev", "--layer", "9"], "exit.layer"),
    (["evaluate", "{model}", "uner-en-ewt:nope"], "has splits train, dev, test"),
    (["quantize", "{model}", "uner-en-ewt:dev", "--batch-size", "0"], "batch_size: must be at least 1"),
    (["quantize", "{model}", "uner-en-ewt:dev", "--limit", "-3"], "limit: dev sentences to use"),
    (["quantize", "{model}", "uner-en-ewt:dev", "--tolerance", "-1"], "tolerance"),
    (["train", "--train", "{tmp}/bad.conll", "--output", "{tmp}/o", "--encoder", "x"], "bad.conll:2: expected 2 columns"),
])
def test_errors_are_single_lines(capsys, model_dir, tmp_path, argv, fragment):
    (tmp_path / "bad.conll").write_text("EU B-ORG\nrejects\n")
    argv = [a.format(model=model_dir, tmp=tmp_path) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert fragment in err
    assert len(shown(err)) == 1 and shown(err)[0].startswith("earlytag: error: ")
    assert not (tmp_path / "o").exists()


def test_calibrate_stores_its_table_and_changes_the_default_only_when_asked(capsys, model_dir, tmp_path, shared_data):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    before = json.loads((copy / "config.json").read_text())["earlytag"].get("exit")
    code, out, err = run(capsys, "calibrate", copy, "uner-en-ewt:dev", "--target-speedup", 1.5, "--limit", 40)
    assert code == 0, err
    assert "calibrated on 40 sentences" in err and "--limit" in err and "default exit is unchanged" in err
    stored = json.loads((copy / "config.json").read_text())["earlytag"]
    assert stored.get("exit") == before  # not silently changed
    assert stored["exit_calibration"]["target_speedup"] == 1.5 and stored["exit_calibration"]["sentences"] == 40
    assert Path(stored["exit_calibration"]["data"]).is_absolute()
    assert "default exit" in (copy / "README.md").read_text()  # the card follows the config
    code, out, err = run(capsys, "calibrate", copy, "uner-en-ewt:dev", "--target-speedup", 1.5, "--limit", 40,
                         "--set-default")
    assert code == 0, err
    result = json.loads(out)
    stored = json.loads((copy / "config.json").read_text())["earlytag"]
    assert stored["exit"] == result["exit"] and "made token" in err
    assert Tagger.from_pretrained(copy).default_exit.policy == "token"
    # --target-speedup on evaluate with other dev data calibrates in memory: nothing is written
    dev = tmp_path / "dev.iob2"
    dev.write_text("".join(open(shared_data / "uner_english_ewt" / "en_ewt-ud-dev.iob2").readlines()[:400]))
    config_before = (copy / "config.json").read_text()
    code, out, err = run(capsys, "evaluate", copy, "uner-en-ewt:test", "--target-speedup", 2, "--no-per-layer",
                         "--calibration-data", dev, "--json", "-")
    assert code == 0, err
    assert f"calibrated on {dev}" in err and "not stored" in err
    assert (copy / "config.json").read_text() == config_before


def test_min_layer_floors_evaluate_calibrate_and_bench(capsys, model_dir, tmp_path, shared_data):
    """``--min-layer M``: nobody halts before layer M — on evaluate (τ that lets everyone go halts every word at
    layer M exactly), in every setting calibrate searches and stores, and in every token setting bench sweeps."""
    code, out, err = run(capsys, "evaluate", model_dir, "uner-en-ewt:dev", "--limit", 40, "--exit", "token",
                         "--threshold", 1.01, "--upper-multiplier", 1, "--min-layer", 2, "--json", "-")
    assert code == 0, err
    result = json.loads(out[out.index('{\n  "'):])
    assert result["exit"]["min_layer"] == 2 and result["mean_exit_layer"] == pytest.approx(2.0)
    code, out, err = run(capsys, "calibrate", model_dir, "uner-en-ewt:dev", "--target-speedup", 1.2, "--limit", 40,
                         "--min-layer", 2, "--dry-run")
    assert code == 0, err
    assert json.loads(out)["exit"]["min_layer"] == 2 and "from layer 2" in err
    # several floors: every one searched; the choice is the best dev score among the settings reaching the target
    from earlytag.calibrate import calibrate

    tagger = Tagger.from_pretrained(model_dir)
    result = calibrate(tagger, "uner-en-ewt:dev", 1.2, limit=40, min_layer=[1, 2])
    floors = [row["exit"].get("min_layer", 1) for row in result.table]
    assert floors.count(1) == floors.count(2) > 0
    reaching = [row for row in result.table if row["flops_speedup"] >= 1.2]
    best = max(reaching, key=lambda r: (r["score"], r["flops_speedup"]))
    assert result.exit.to_dict() == best["exit"] and result.score == best["score"]
    bench = tmp_path / "bench"
    code, out, err = run(capsys, "bench", model_dir, "uner-en-ewt:dev", "--out", bench, "--limit", 40, "--no-timing",
                         "--policies", "token", "--window", 1, "--min-layer", 2, "--quiet")
    assert code == 0, err
    rows = [r for r in json.loads((bench / "results.json").read_text()) if r["policy"] == "token"]
    assert rows and all(r["settings"]["min_layer"] == 2 and r["settings"]["window"] == 1 for r in rows)
    assert all(r["mean_exit_layer"] >= 2.0 for r in rows)
    code, _, err = run(capsys, "evaluate", model_dir, "uner-en-ewt:dev", "--exit", "token", "--threshold", 0.1,
                       "--min-layer", 9)
    assert code == 2 and "exit.min_layer" in err and len(shown(err)) == 1


def test_calibrate_refines_tau_between_the_grid_steps_around_the_target(model_dir, shared_data):
    """Where a family's grid steps past the target, τ is bisected between the two grid thresholds around it: the
    refined rows (marked) lie strictly between them, there are ``refine`` per such family, and the choice reaches
    the target at a dev score at least the grid's own choice's."""
    from earlytag.calibrate import _brackets, calibrate

    tagger = Tagger.from_pretrained(model_dir)
    grid_only = calibrate(tagger, "uner-en-ewt:dev", 1.3, limit=40, refine=0)
    rows = [{**r, "exit": ExitConfig.from_dict(r["exit"])} for r in grid_only.table]
    brackets = _brackets(rows, 1.3)
    assert brackets and not any(r.get("refined") for r in grid_only.table)
    refined = calibrate(tagger, "uner-en-ewt:dev", 1.3, limit=40, refine=2)
    new = [r for r in refined.table if r.get("refined")]
    assert len(new) == 2 * len(brackets) and len(refined.table) == len(grid_only.table) + len(new)
    for row in new:
        cfg = ExitConfig.from_dict(row["exit"])
        lo, hi = next((lo, hi) for lo, hi in brackets if replace(lo, threshold=None) == replace(cfg, threshold=None))
        assert lo.threshold < cfg.threshold < hi.threshold
    assert refined.reached and refined.flops_speedup >= 1.3 and refined.score >= grid_only.score
    with pytest.raises(ConfigError, match="refine"):
        calibrate(tagger, "uner-en-ewt:dev", 1.3, limit=40, refine=-1)


def test_quantize_stores_its_choice_and_says_what_it_stored(capsys, model_dir, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    config_before = (copy / "config.json").read_text()
    code, out, err = run(capsys, "quantize", copy, "uner-en-ewt:dev", "--limit", 20, "--dry-run", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    assert "scored on 20 sentences" in err and "--limit" in err and "dry run: nothing stored" in err
    assert set(result["scores"]) >= {"fp32", "int8", "int8-mixed, every layer", "layer 0"}
    assert (copy / "config.json").read_text() == config_before
    code, out, err = run(capsys, "quantize", copy, "uner-en-ewt:dev", "--limit", 20, "--quiet")
    assert code == 0, err
    stored = json.loads((copy / "config.json").read_text())["earlytag"]["int8_mixed"]["torch"]
    assert stored["float_ffn_out"] == json.loads(out)["float_ffn_out"] and stored["sentences"] == 20
    assert "stored in" in err and "--backend torch" in err and "int8-mixed, torch" in (copy / "README.md").read_text()
    layers = stored["float_ffn_out"]  # the stored choice in words: which layers, or none (then it runs as int8)
    said = (f"float32 in layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))} (from 0)" if layers
            else "float32 in no layer (int8 alone was within the tolerance), i.e. runs as --precision int8")
    assert said in err


def test_data_list_and_version(capsys):
    code, out, _ = run(capsys, "data", "list")
    assert code == 0 and "uner-en-ewt" in out
    with pytest.raises(SystemExit):
        main(["--version"])


def test_demo_trains_calibrates_and_compares(tokenizer, shared_data, tmp_path, capsys):
    """The README's first command end to end on a few sentences: a model with its card and a stored default exit,
    and full depth against that default on the same test sentences."""
    out = tmp_path / "demo"
    assert main(["demo", "--train-limit", "40", "--epochs", "1", "--dev-limit", "40", "--output", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "full depth" in printed and "early exit (default)" in printed
    tagger = Tagger.from_pretrained(out)
    assert tagger.config.exit is not None  # calibrated on dev and stored
    assert tagger.config.exit_calibration["sentences"] == 40
    assert (out / "README.md").read_text(encoding="utf-8").count("earlytag demo") >= 1


def test_an_unknown_option_is_reported_with_its_verb(capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "models/x", "uner-en-ewt:test", "--limt", "3"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "earlytag evaluate: error: unrecognized arguments: --limt 3" in err and "usage: earlytag evaluate" in err
