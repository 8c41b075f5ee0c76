"""Nothing is lost: train never deletes a user's files, a save killed at any step leaves a loadable model and
recoverable leftovers, killed writers' temporary files are cleaned, files get the usual permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from earlytag.storage import (
    SAVE_STEPS,
    AtomicFile,
    atomic_write_text,
    check_output_dir,
    is_model_dir,
    recover_dir,
    save_dir,
)

REPO = Path(__file__).resolve().parents[1]

# a save of a fake model (no torch: the child starts fast), version given on the command line
CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import earlytag.storage as storage
    if sys.argv[3] == "no-swap":
        storage._swap = lambda a, b: False
    def write(tmp):
        (tmp / "config.json").write_text(json.dumps({"earlytag": {"labels": ["O"]}, "version": sys.argv[2]}))
        (tmp / "model.safetensors").write_bytes(sys.argv[2].encode() * 1000)
        return ["config.json", "model.safetensors"]
    storage.save_dir(Path(sys.argv[1]), write, overwrite=True)
""")


def child_save(directory: Path, version: str, failpoint: str | None = None, swap: str = "swap") -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("EARLYTAG_FAILPOINT", None)
    if failpoint:
        env["EARLYTAG_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-c", CHILD, str(directory), version, swap], env=env).returncode


def version_of(directory: Path) -> str:
    assert is_model_dir(directory), sorted(p.name for p in directory.parent.iterdir())
    return json.loads((directory / "config.json").read_text())["version"]


def user_files(directory: Path) -> None:
    (directory / "notes.txt").write_text("my notes")
    (directory / "sub").mkdir()
    (directory / "sub" / "inner.txt").write_text("keep me")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}."))


FALLBACK_STEPS = ("staging-created", "files-written", "before-swap", "moved-aside")  # no atomic exchange


@pytest.mark.parametrize("step, swap", [(s, "swap") for s in SAVE_STEPS] + [(s, "no-swap") for s in FALLBACK_STEPS])
def test_a_save_killed_at_any_step_leaves_a_model_and_loses_nothing(tmp_path, step, swap):
    model = tmp_path / "model"
    assert child_save(model, "old") == 0
    user_files(model)
    assert child_save(model, "new", failpoint=step, swap=swap) == 137  # died there, as under kill -9
    before_swap = step in ("staging-created", "files-written", "files-synced", "before-swap", "moved-aside")
    if step == "moved-aside":  # the two-rename fallback: DIR is missing until the next run puts it back
        assert not model.exists() and leftovers(model)
    else:
        assert version_of(model) == ("old" if before_swap else "new")  # at every instant a whole model
    recover_dir(model)  # what the next save, train or load does first
    assert leftovers(model) == []
    assert version_of(model) == ("old" if before_swap else "new")
    assert (model / "notes.txt").read_text() == "my notes"
    assert (model / "sub" / "inner.txt").read_text() == "keep me"
    assert child_save(model, "newer") == 0  # and the next save works
    assert version_of(model) == "newer" and (model / "notes.txt").exists() and leftovers(model) == []


def test_save_keeps_foreign_files_and_refuses_what_it_must(tmp_path):
    def write(tmp):
        (tmp / "config.json").write_text(json.dumps({"earlytag": {"labels": ["O"]}}))
        return ["config.json"]

    target = tmp_path / "out"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(Exception, match="not empty .*thesis.tex.* not an earlytag model"):
        save_dir(target, write, overwrite=True)
    assert (target / "thesis.tex").read_text() == "years of work"
    model = tmp_path / "model"
    save_dir(model, write)
    with pytest.raises(Exception, match="already holds an earlytag model"):
        save_dir(model, write)
    (model / "README.local").write_text("mine")
    save_dir(model, write, overwrite=True)
    assert (model / "README.local").read_text() == "mine"
    manifest = json.loads((model / ".earlytag-manifest.json").read_text())
    assert "README.local" not in manifest["files"] and "config.json" in manifest["files"]


def test_check_output_dir(tmp_path):
    check_output_dir(tmp_path / "new")  # does not exist: fine
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception, match="not a directory"):
        check_output_dir(tmp_path / "file")


def test_files_are_world_readable_like_any_output(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")

        def write(tmp):
            (tmp / "model.safetensors").write_bytes(b"x")
            os.chmod(tmp / "model.safetensors", 0o600)  # what safetensors' writer leaves
            (tmp / "config.json").write_text(json.dumps({"earlytag": {"labels": ["O"]}}))
            return ["model.safetensors", "config.json"]

        save_dir(tmp_path / "m", write)
    finally:
        os.umask(old)
    for p in (tmp_path / "a.txt", tmp_path / "m" / "model.safetensors", tmp_path / "m" / "config.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_file_cleans_what_killed_writers_left(tmp_path):
    target = tmp_path / "out.jsonl"
    stale = tmp_path / f".out.jsonl.tmp-{dead_pid()}"
    stale.write_text("half")
    live = tmp_path / f".out.jsonl.tmp-{os.getppid()}"  # a writer that is still running: left alone
    live.write_text("in progress")
    with AtomicFile(target) as f:
        f.write("whole")
    assert target.read_text() == "whole"
    assert not stale.exists() and live.exists()
    with pytest.raises(RuntimeError):
        with AtomicFile(target) as f:
            f.write("partial")
            raise RuntimeError("tagging failed")
    assert target.read_text() == "whole"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name])


def test_a_real_model_killed_right_after_the_swap(tmp_path, tokenizer):
    """The real save path (torch weights, tokenizer files): killed after the swap, the new model loads and the next
    save puts the user's files back in place."""
    from earlytag import Tagger

    from .conftest import tiny_model

    model = tmp_path / "model"
    Tagger(tiny_model("bert", seed=1), tokenizer).save_pretrained(model)
    user_files(model)
    code = textwrap.dedent(f"""
        import torch
        from transformers import AutoTokenizer
        from earlytag import Tagger
        from earlytag.model.config import TaggerConfig
        from earlytag.model.tagger import EarlyExitTagger
        from transformers import BertConfig
        torch.manual_seed(2)
        cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)
        m = EarlyExitTagger(TaggerConfig(labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]), cfg)
        Tagger(m, AutoTokenizer.from_pretrained({str(model)!r})).save_pretrained({str(model)!r}, overwrite=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "EARLYTAG_FAILPOINT": "swapped"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 137
    loaded = Tagger.from_pretrained(model)  # the new model, whole
    import torch

    torch.manual_seed(2)
    assert torch.equal(loaded.model.heads[0].linear.weight, tiny_model("bert", seed=2).heads[0].linear.weight)
    assert leftovers(model)  # loading does not write; the old model waits in a hidden sibling
    loaded.save_pretrained(model, overwrite=True)
    assert leftovers(model) == []
    assert (model / "notes.txt").read_text() == "my notes" and (model / "sub" / "inner.txt").exists()


# ----------------------------------------------------------------------------- train never deletes


def test_train_refuses_a_directory_with_other_files(tmp_path, capsys, tiny_encoder_dirs, shared_data):
    from earlytag.cli import main

    out = tmp_path / "v"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("x")
    code = main(["train", "--task", "ner", "--train", "uner-en-ewt:train", "--train-limit", "20", "--epochs", "1",
                 "--encoder", str(tiny_encoder_dirs["bert"]), "--output", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "is not empty (notes.txt, sub) and is not an earlytag model" in err
    assert (out / "notes.txt").read_text() == "x" and (out / "sub").is_dir()


def test_train_replaces_a_model_only_with_overwrite_and_keeps_other_files(tmp_path, capsys, tokenizer,
                                                                         tiny_encoder_dirs, shared_data):
    from earlytag import Tagger
    from earlytag.cli import main

    from .conftest import tiny_model

    out = tmp_path / "model"
    Tagger(tiny_model("bert"), tokenizer).save_pretrained(out)
    (out / "notes.txt").write_text("keep")
    before = (out / "model.safetensors").read_bytes()
    argv = ["train", "--task", "ner", "--train", "uner-en-ewt:train", "--train-limit", "20", "--epochs", "1",
            "--encoder", str(tiny_encoder_dirs["bert"]), "--output", str(out), "--quiet"]
    assert main(argv) == 2
    assert "already holds an earlytag model; pass --overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert main(argv + ["--overwrite"]) == 0, capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() != before
    assert (out / "notes.txt").read_text() == "keep"
    assert json.loads((out / "training_log.json").read_text())["epochs"]
    assert leftovers(out) == []


def test_a_config_update_whose_card_fails_writes_nothing(tmp_path, tokenizer, monkeypatch):
    """update_saved_config (calibrate, quantize) renders the card before writing: if that fails, config.json and the
    card stay as they were (a model of an older version once lacked a key the card read)."""
    from earlytag import Tagger
    from earlytag.model import tagger as tagger_module

    from .conftest import tiny_model

    path = tmp_path / "model"
    Tagger(tiny_model("bert"), tokenizer).save_pretrained(path)
    before = {name: (path / name).read_bytes() for name in ("config.json", "README.md")}

    def broken(raw):
        raise KeyError("recipe")

    monkeypatch.setattr(tagger_module, "render_card", broken)
    with pytest.raises(KeyError):
        tagger_module.update_saved_config(path, {"int8_mixed": {"torch": {"float_ffn_out": [0]}}})
    assert {name: (path / name).read_bytes() for name in before} == before
    monkeypatch.undo()
    tagger_module.update_saved_config(path, {"int8_mixed": {"torch": {"float_ffn_out": [0], "scores": {}}}})
    assert json.loads((path / "config.json").read_text())["earlytag"]["int8_mixed"]["torch"]["float_ffn_out"] == [0]
    assert "int8-mixed, torch | FFN output kept float32 in layer 0 (from 0)" in (path / "README.md").read_text()
    tagger_module.update_saved_config(path, {"int8_mixed": {"torch": {"float_ffn_out": [], "scores": {}}}})
    assert "int8-mixed, torch | FFN output kept float32 in no layer (runs as int8)" in (path / "README.md").read_text()
