"""Decoding over a key/value cache honours the attention knobs (qk_norm before rotary, softcap, sinks, partial and
scaled rotary), per-layer attention patterns (each layer's cache follows its own attention) and distinct value
widths; packed documents and a cache are refused together."""
from __future__ import annotations

import pytest
import torch

import blockzoo
from blockzoo.blocks.kv_cache import KVCache
from blockzoo.registry import registry

VOCAB = 61
PROMPTS = [[5, 9, 2, 33, 7, 1, 40], [11, 3], [60, 2, 8, 8]]
GREEDY = dict(temperature=0, repetition_penalty=1.5)  # the penalty keeps a random model from repeating itself


def lm(attention: dict, embedding: dict, seed: int = 0, **extra) -> torch.nn.Module:
    """A tiny float64 decoder LM (gpt-style) with random weights, sink logits included, large enough that
    greedy tokens vary."""
    torch.manual_seed(seed)
    cfg = {**dict(name="decoder_lm", vocab_size=VOCAB, dim_model=32, num_heads=4, num_layers=2, max_seq_len=40,
                  attention=attention, embedding=embedding), **extra}
    model = blockzoo.build_model(cfg).to(torch.float64).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.8)
    return model


def chunked(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of ``tokens`` fed through a cache in chunks (a prompt, single steps, a multi-token step)."""
    cache = model.make_cache(tokens.shape[0], tokens.shape[1])
    cuts = (0, 5, 6, 7, 13, tokens.shape[1])
    return torch.cat([model(tokens[:, a:b], positions=torch.arange(a, b), cache=cache)
                      for a, b in zip(cuts, cuts[1:])], 1)


def greedy_matches_rerun(model: torch.nn.Module, new: int) -> list[list[int]]:
    out = model.generate(PROMPTS, new, **GREEDY)
    width = max(map(len, PROMPTS))
    assert torch.equal(out, model.generate(PROMPTS, new, use_cache=False, **GREEDY))
    got = out[:, width:].tolist()
    assert len({t for row in got for t in row}) > 1  # the check can fail: tokens vary
    return got


# ------------------------------------------------------------------------------------------ per-layer patterns
def test_hybrid_local_global_pattern_decodes_each_layer_with_its_own_cache():
    model = lm({"name": "local", "window_size": 6}, {"name": "rotary"},
               attention_pattern=["local", "scaled_dot_product"])
    kinds = [type(b.self_attn.attention).__name__ for b in model.blocks]
    assert kinds == ["LocalAttention", "ScaledDotProduct"]
    cache = model.make_cache(3, 40)
    assert [layer.capacity for layer in cache.layers] == [4, 40]  # a ring of the window, then the whole context
    greedy_matches_rerun(model, 30)  # 30 tokens: far past the local window
    tokens = torch.randint(0, VOCAB, (2, 19))
    torch.testing.assert_close(chunked(model, tokens), model(tokens), rtol=1e-10, atol=1e-10)


def test_pattern_with_an_attention_that_cannot_decode_falls_back_to_the_window_rerun():
    model = lm({"name": "scaled_dot_product"}, {"name": "vocab"}, attention_pattern=["scaled_dot_product", "random"])
    assert not model.decodes_with_cache()
    with pytest.raises(ValueError, match=r"model\.blocks\.1: attention 'random' cannot decode"):
        model.make_cache(1, 10)
    assert model.generate([[1, 2, 3]], 4, use_cache=False, temperature=0).shape == (1, 7)


# ----------------------------------------------------------------------------------------------------- knobs
KNOBS = {"softcap": 2.0, "sinks": True, "qk_norm": "rms"}
KNOB_CASES = [
    pytest.param({"name": "scaled_dot_product", **KNOBS},
                 {"name": "rotary", "fraction": 0.5, "scaling": "yarn", "factor": 2.0}, id="sdp-rotary-half-yarn"),
    pytest.param({"name": "local", "window_size": 6, **KNOBS}, {"name": "rotary", "fraction": 0.5},
                 id="local-rotary-half"),
    pytest.param({"name": "alibi", **KNOBS}, {"name": "alibi"}, id="alibi"),
]


@pytest.mark.parametrize("attention,embedding", KNOB_CASES)
def test_decoding_honours_softcap_sinks_qk_norm_and_partial_rotary(attention, embedding):
    model = lm(attention, embedding, num_kv_heads=2)
    att = model.blocks[0].self_attn
    assert att.qk_norm is not None and att.attention.sink_logits is not None
    tokens = torch.randint(0, VOCAB, (2, 19))
    full = model(tokens)
    torch.testing.assert_close(chunked(model, tokens), full, rtol=1e-10, atol=1e-10)
    greedy_matches_rerun(model, 20)
    # the comparison can fail: each knob changes the logits of this model
    for block in model.blocks:
        block.self_attn.attention.cfg.softcap = None
    assert (model(tokens) - full).abs().max() > 1e-3
    for block in model.blocks:
        block.self_attn.attention.cfg.softcap = attention["softcap"]
        block.self_attn.attention.sink_logits.data.zero_()
    assert (model(tokens) - full).abs().max() > 1e-3


def test_cached_block_with_a_distinct_value_width_matches_its_full_forward():
    torch.manual_seed(1)
    block = registry("block").build(dict(name="decoder_only", dim_model=32, num_heads=4, num_kv_heads=2, causal=True,
                                         dim_key=16, dim_value=48, attention={"name": "scaled_dot_product", **KNOBS},
                                         rotary=True, rotary_options={"fraction": 0.5}, norm={"name": "layer_norm"},
                                         feedforward={"name": "mlp"}),
                                    path="model.blocks.0").to(torch.float64).eval()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    cache = KVCache([block], 2, 11, torch.float64, "cpu")
    assert cache[0].k.shape[-1] == 4 and cache[0].v.shape[-1] == 12
    parts = []
    for a, b in ((0, 4), (4, 5), (5, 11)):
        parts.append(block(x[:, a:b], positions=torch.arange(a, b), cache=cache[0]))
        cache.advance(b - a)
    torch.testing.assert_close(torch.cat(parts, 1), block(x), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------ packed documents
def test_packed_documents_and_a_cache_are_refused_together():
    model = lm({"name": "scaled_dot_product"}, {"name": "rotary"})
    tokens = torch.randint(0, VOCAB, (1, 8))
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]])
    with pytest.raises(ValueError, match="packed documents .* cannot be combined with cache"):
        model(tokens, doc_ids=doc_ids, cache=model.make_cache(1, 8))
    with pytest.raises(ValueError, match="cannot be combined with positions"):
        model(tokens, cu_seqlens=torch.tensor([0, 3, 8]), positions=torch.arange(8))
    assert model(tokens, doc_ids=doc_ids).shape == (1, 8, VOCAB)  # packed alone still runs
