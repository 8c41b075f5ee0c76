"""The C allocator setting (earlytag.allocator): what reaches glibc's mallopt, when the CLI sets it, bad values."""

from __future__ import annotations

import platform

import pytest

from earlytag import allocator
from earlytag.cli import main
from earlytag.errors import ConfigError


@pytest.fixture
def mallopt(monkeypatch):
    """A recording stand-in for glibc's mallopt (accepting every call); the recorded ``(param, value)`` pairs."""
    calls = []
    monkeypatch.setattr(allocator, "_mallopt", lambda: lambda param, value: calls.append((param, value)) or 1)
    monkeypatch.setattr(allocator, "_state", {})
    return calls


def test_keep_freed_memory_sets_both_thresholds(mallopt):
    assert allocator.kept_freed_memory() is None
    assert allocator.keep_freed_memory(256) is True
    assert mallopt == [(-3, 32 * 2**20), (-1, 256 * 2**20)]  # M_MMAP_THRESHOLD at glibc's maximum, M_TRIM_THRESHOLD
    assert allocator.kept_freed_memory() == 256
    with pytest.raises(ConfigError, match="trim_mb"):
        allocator.keep_freed_memory(-1)


def test_without_glibc_nothing_is_set(monkeypatch):
    monkeypatch.setattr(allocator, "_mallopt", lambda: None)
    monkeypatch.setattr(allocator, "_state", {})
    assert allocator.keep_freed_memory() is False and allocator.kept_freed_memory() is None


def test_glibc_takes_the_settings_on_linux(monkeypatch):
    """The real mallopt: on glibc Linux (this project's machines and CI) both values are accepted."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.fail(f"this test needs glibc Linux, got {platform.system()} {platform.libc_ver()}")
    monkeypatch.setattr(allocator, "_state", {})
    assert allocator._mallopt() is not None
    assert allocator.keep_freed_memory(1024) is True and allocator.kept_freed_memory() == 1024


@pytest.mark.parametrize("value, expect", [("", [(-3, 32 << 20), (-1, 1024 << 20)]), ("1", [(-3, 32 << 20), (-1, 1024 << 20)]),
                                           ("0", []), ("off", []), ("64", [(-3, 32 << 20), (-1, 64 << 20)])])
def test_the_environment_variable(monkeypatch, mallopt, value, expect):
    monkeypatch.setenv(allocator.ENV, value)
    assert allocator.keep_freed_memory_from_env() is bool(expect)
    assert mallopt == expect


@pytest.mark.parametrize("value", ["lots", "-5", "1.5"])
def test_a_bad_environment_value_is_named(monkeypatch, mallopt, value):
    monkeypatch.setenv(allocator.ENV, value)
    with pytest.raises(ConfigError, match=allocator.ENV):
        allocator.keep_freed_memory_from_env()
    assert mallopt == []


def test_every_cli_verb_sets_it_first(monkeypatch, mallopt, capsys):
    """The CLI sets the allocator before the verb runs (here a verb that fails at once on a missing model), and
    a bad value stops it with one line naming the variable."""
    monkeypatch.delenv(allocator.ENV, raising=False)
    assert main(["evaluate", "no-such-model-dir", "no-such-data"]) == 2
    assert mallopt == [(-3, 32 << 20), (-1, 1024 << 20)]
    monkeypatch.setenv(allocator.ENV, "lots")
    capsys.readouterr()
    assert main(["evaluate", "no-such-model-dir", "no-such-data"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("earlytag: error:") and allocator.ENV in err and "\n" not in err


def test_a_ray_actor_sets_it_as_the_cli_does(monkeypatch, mallopt, tokenizer, tmp_path):
    """A Ray Data actor's process belongs to its tagger: building one sets the allocator (the actor class
    itself, constructed here without Ray), and honours the same variable."""
    import torch

    from earlytag import Tagger
    from earlytag.ray_tagging import TaggerPredictor

    from .conftest import tiny_model

    Tagger(tiny_model("bert"), tokenizer).save_pretrained(tmp_path / "m")
    monkeypatch.delenv(allocator.ENV, raising=False)
    threads = torch.get_num_threads()  # the actor sets its own (1): put this process's back afterwards
    try:
        TaggerPredictor(str(tmp_path / "m"))
        assert mallopt == [(-3, 32 << 20), (-1, 1024 << 20)]
        mallopt.clear()
        monkeypatch.setenv(allocator.ENV, "0")
        TaggerPredictor(str(tmp_path / "m"))
        assert mallopt == []
    finally:
        torch.set_num_threads(threads)
