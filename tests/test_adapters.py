"""Every adapter, run layer by layer through earlytag's layer code, equals the installed transformers forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, BertConfig, ElectraConfig, MPNetConfig, RobertaConfig, XLMRobertaConfig

from earlytag.errors import ConfigError
from earlytag.model.adapters import BertAdapter, MPNetAdapter, adapter_for
from earlytag.model.layers import attention_bias, dense_layer

from .conftest import TINY, USER_CACHE, missing, tiny_model

CONFIGS = {
    "bert": (BertConfig, {}, BertAdapter),
    "roberta": (RobertaConfig, {}, BertAdapter),
    "xlm-roberta": (XLMRobertaConfig, {}, BertAdapter),
    "electra": (ElectraConfig, {"embedding_size": 16}, BertAdapter),
    "mpnet": (MPNetConfig, {}, MPNetAdapter),
}


@pytest.mark.parametrize("family", list(CONFIGS))
def test_layerwise_forward_equals_transformers(family):
    cls, extra, adapter_cls = CONFIGS[family]
    torch.manual_seed(0)
    encoder = AutoModel.from_config(cls(vocab_size=200, **TINY, **extra)).eval()
    adapter = adapter_for(encoder)
    assert isinstance(adapter, adapter_cls)
    ids = torch.randint(5, 200, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = encoder.config.pad_token_id
    with torch.no_grad():
        reference = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        h = adapter.embed(ids)
        bias = attention_bias(adapter, mask.bool(), h.dtype)
        for parts in adapter.layers:
            h = dense_layer(parts, h, bias, adapter.num_heads)
    assert torch.allclose(h[mask.bool()], reference[mask.bool()], atol=1e-5)


def test_mpnet_position_bias_is_shared_and_cached():
    model = tiny_model("mpnet")
    assert model.adapter.position_bias(9).requires_grad  # training: computed afresh, with gradients
    with torch.no_grad():
        a = model.adapter.position_bias(9)
        assert a.shape == (TINY["num_attention_heads"], 9, 9)
        assert model.adapter.position_bias(9) is a  # cached in inference
        model.encoder.encoder.relative_attention_bias.weight.add_(1.0)
        assert not torch.equal(model.adapter.position_bias(9), a)  # an update invalidates the cache
        # the uncached form an exported graph computes from the hidden states' shape gives the same bias
        for length in (1, 9, 40):
            h = torch.randn(1, length, TINY["hidden_size"])
            assert torch.equal(model.adapter.traced_position_bias(h), model.adapter.position_bias(length))
    assert tiny_model("bert").adapter.traced_position_bias(torch.randn(1, 5, TINY["hidden_size"])) is None


def test_unsupported_family_is_a_clear_error():
    from transformers import GPT2Config

    encoder = AutoModel.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=50))
    with pytest.raises(ConfigError, match="model type 'gpt2' is not supported"):
        adapter_for(encoder)


def test_pretrained_mpnet_matches_transformers():
    """all-mpnet-base-v2 itself (when `make mpnet` assembled it): relative position bias and all 12 layers."""
    from transformers import AutoTokenizer

    path = USER_CACHE / "encoders" / "all-mpnet-base-v2"
    if not (path / "model.safetensors").is_file():
        missing("all-mpnet-base-v2 is not assembled (make mpnet)")
    encoder = AutoModel.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    enc = tok(["Angela Merkel visited Paris on Tuesday.", "Short one."], padding=True, return_tensors="pt")
    adapter = adapter_for(encoder)
    with torch.no_grad():
        reference = encoder(**enc).last_hidden_state
        h = adapter.embed(enc["input_ids"])
        bias = attention_bias(adapter, enc["attention_mask"].bool(), h.dtype)
        for parts in adapter.layers:
            h = dense_layer(parts, h, bias, adapter.num_heads)
    mask = enc["attention_mask"].bool()
    assert torch.allclose(h[mask], reference[mask], atol=1e-4)
