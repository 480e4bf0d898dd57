"""Generation with a key/value cache: the same tokens as re-running the whole window, for every attention that
decodes, batch sizes 1 and 3, ragged (left-padded) prompts, float64 and float32; sampling, stopping, bad input."""
from __future__ import annotations

import pytest
import torch

import blockzoo
from blockzoo.blocks import generation
from blockzoo.blocks.kv_cache import KVCache
from blockzoo.registry import registry

VOCAB = 61

# every attention that supports decoding, with the embeddings it is used with
DECODING = {
    "scaled_dot_product": [({"name": "scaled_dot_product"}, "vocab", {}),
                           ({"name": "scaled_dot_product"}, "rotary", {"num_kv_heads": 2}),  # GQA
                           ({"name": "scaled_dot_product"}, "sine", {"num_kv_heads": 1})],  # MQA
    "local": [({"name": "local", "window_size": 6}, "rotary", {}),  # ring of 4 slots, decoding past it
              ({"name": "local", "window_size": 5}, "vocab", {"num_kv_heads": 2})],
    "alibi": [({"name": "alibi"}, "alibi", {}), ({"name": "alibi"}, "alibi", {"num_kv_heads": 1})],
}
CASES = [pytest.param(att, emb, extra, id=f"{att['name']}-{emb}-kv{extra.get('num_kv_heads', 4)}")
         for cases in DECODING.values() for att, emb, extra in cases]
PROMPTS = [[5, 9, 2, 33, 7, 1, 40], [11, 3], [60, 2, 8, 8]]


def lm(attention: dict, embedding: str, dtype: torch.dtype = torch.float64, seed: int = 0, **extra) -> torch.nn.Module:
    """A tiny decoder LM with random weights large enough that greedy tokens vary."""
    torch.manual_seed(seed)
    cfg = {**dict(name="decoder_lm", vocab_size=VOCAB, dim_model=32, num_heads=4, num_layers=2, max_seq_len=40,
                  attention=attention, embedding={"name": embedding}), **extra}
    model = blockzoo.build_model(cfg).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.8)
    return model


def one_by_one(model: torch.nn.Module, prompts: list[list[int]], n: int, **options) -> list[list[int]]:
    """Each prompt alone, the whole window re-run for every token (no cache, no padding)."""
    return [model.generate(torch.tensor([p]), n, use_cache=False, **options)[0, len(p):].tolist() for p in prompts]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("attention,embedding,extra", CASES)
def test_greedy_with_cache_equals_window_rerun(attention, embedding, extra, batch, dtype):
    model = lm(attention, embedding, dtype, **extra)
    prompts = PROMPTS[:batch]
    greedy = dict(temperature=0, repetition_penalty=1.5)  # the penalty keeps a random model from repeating itself
    out = model.generate(prompts, 12, **greedy)
    width = max(map(len, prompts))
    assert out.shape == (batch, width + 12)
    got = out[:, width:].tolist()
    assert got == one_by_one(model, prompts, 12, **greedy)
    assert torch.equal(out, model.generate(prompts, 12, use_cache=False, **greedy))  # batched re-run too
    assert len({t for row in got for t in row}) > 1  # the check can fail: tokens vary


def test_every_decoding_attention_is_tested():
    names = {n for n in registry("attention").names()
             if getattr(registry("attention").get(n).cls, "supports_decoding", False)}
    assert names == set(DECODING)


@pytest.mark.parametrize("attention,embedding,extra", CASES[:1] + CASES[3:4] + CASES[5:6])
def test_sampling_with_a_generator_gives_the_same_tokens_with_and_without_cache(attention, embedding, extra):
    model = lm(attention, embedding, **extra)
    opts = dict(temperature=0.9, top_k=20, top_p=0.95, min_p=0.01, repetition_penalty=1.3)
    a = model.generate(PROMPTS, 15, generator=torch.Generator().manual_seed(3), **opts)
    b = model.generate(PROMPTS, 15, generator=torch.Generator().manual_seed(3), use_cache=False, **opts)
    c = model.generate(PROMPTS, 15, generator=torch.Generator().manual_seed(4), **opts)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("attention,embedding", [({"name": "scaled_dot_product"}, "rotary"),
                                                 ({"name": "local", "window_size": 4}, "vocab"),
                                                 ({"name": "alibi"}, "alibi")])
def test_cached_forward_in_chunks_matches_the_full_forward(attention, embedding):
    model = lm(attention, embedding)
    tokens = torch.randint(0, VOCAB, (2, 17))
    full = model(tokens)
    cache = model.make_cache(2, 17)
    parts = [model(tokens[:, a:b], positions=torch.arange(a, b), cache=cache) for a, b in ((0, 5), (5, 6), (6, 13),
                                                                                          (13, 17))]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-10)
    assert cache.length == 17 and cache.index.tolist() == [17, 17]


def test_local_window_cache_is_a_ring_of_constant_memory_past_max_seq_len():
    model = lm({"name": "local", "window_size": 6}, "rotary")
    cache = model.make_cache(1, 200)
    assert [layer.capacity for layer in cache.layers] == [4, 4]
    before = [t.data_ptr() for layer in cache.layers for t in layer.tensors()]
    out = model.generate([[1, 2, 3]], 120, temperature=0, cache=cache)  # max_seq_len is 40
    assert out.shape == (1, 123)
    assert [t.data_ptr() for layer in cache.layers for t in layer.tensors()] == before
    # the same tokens as the cache-free window re-run over the first 37 (within max_seq_len)
    assert out[0, 3:40].tolist() == one_by_one(model, [[1, 2, 3]], 37, temperature=0)[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_encoder_decoder_generates_with_cross_attention_computed_once(dtype):
    torch.manual_seed(0)
    model = blockzoo.build_model(dict(name="encoder_decoder", vocab_size=VOCAB, dim_model=32, num_heads=4,
                                      num_layers=2, max_seq_len=32, num_kv_heads=2)).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.8)
    src = torch.randint(2, VOCAB, (3, 9))
    src_padding = torch.zeros(3, 9, dtype=torch.bool)
    src_padding[1, 6:] = True
    greedy = dict(temperature=0, repetition_penalty=1.5)
    cached = model.generate(src, 10, src_padding=src_padding, **greedy)
    assert torch.equal(cached, model.generate(src, 10, src_padding=src_padding, use_cache=False, **greedy))
    for i in range(3):  # each source alone, its padding removed
        keep = ~src_padding[i]
        alone = model.generate(src[i:i + 1, keep], 10, use_cache=False, **greedy)
        assert torch.equal(alone[0], cached[i])
    assert len(set(cached[:, 1:].flatten().tolist())) > 2
    g = [torch.Generator().manual_seed(5) for _ in range(2)]
    assert torch.equal(model.generate(src, 10, src_padding=src_padding, generator=g[0], top_p=0.9),
                       model.generate(src, 10, src_padding=src_padding, generator=g[1], top_p=0.9, use_cache=False))


def test_eos_stops_each_sequence_and_pads_after():
    model = lm({"name": "scaled_dot_product"}, "vocab")
    greedy = dict(temperature=0, repetition_penalty=1.5)
    free = model.generate(PROMPTS, 10, **greedy)[:, 7:]
    eos = int(free[0, 2])  # the first sequence emits it at its third new token
    out = model.generate(PROMPTS, 10, eos_token=eos, pad_token=0, **greedy)[:, 7:]
    for row, ref in zip(out.tolist(), free.tolist()):
        stop = ref.index(eos) + 1 if eos in ref else len(ref)
        assert row[:stop] == ref[:stop]
        assert all(t == 0 for t in row[stop:])
    alone = model.generate([[4, 4]], 10, **greedy)[0, 2:].tolist()
    early = model.generate([[4, 4]], 10, eos_token=alone[3], **greedy)
    assert early.shape == (1, 2 + alone.index(alone[3]) + 1)  # the loop ends when every sequence has stopped


def test_tensor_prompt_with_left_padding_and_streaming():
    model = lm({"name": "scaled_dot_product"}, "rotary")
    tokens, padding = generation.left_pad(PROMPTS, 0)
    seen: list[torch.Tensor] = []
    out = model.generate(tokens, 6, temperature=0, padding=padding, on_token=seen.append)
    assert torch.equal(out, model.generate(PROMPTS, 6, temperature=0))
    assert torch.equal(torch.stack(seen, 1), out[:, 7:])


def test_compile_gives_the_same_tokens():
    model = lm({"name": "scaled_dot_product"}, "rotary", dtype=torch.float32, num_layers=1)
    eager = model.generate(PROMPTS, 5, temperature=0)
    try:
        compiled = model.generate(PROMPTS, 5, temperature=0, compile=True)
    except Exception as e:  # noqa: BLE001 - inductor needs a C++ toolchain on the CPU
        if "Inductor" in type(e).__name__ or "CppCompile" in str(e) or "compiler" in str(e).lower():
            pytest.skip(f"inductor cannot compile on this machine: {e}")
        raise
    assert torch.equal(compiled, eager)
    assert torch.equal(model.generate(PROMPTS, 5, temperature=0, compile=True), eager)  # compiled once, reused


# -- logit processors ---------------------------------------------------------------------------------


def test_logit_processors_against_a_direct_reference():
    torch.manual_seed(0)
    logits = torch.randn(4, 50, dtype=torch.float64)
    probs = logits.softmax(-1)
    kept = lambda s: torch.isfinite(generation.process_logits(logits, s, None))  # noqa: E731
    k = kept(generation.Sampling(top_k=7))
    assert k.sum(-1).tolist() == [7] * 4 and torch.equal(k, logits >= logits.topk(7).values[:, -1:])
    p = kept(generation.Sampling(top_p=0.5))
    for row in range(4):  # the smallest set of best tokens whose mass reaches 0.5
        order = probs[row].argsort(descending=True)
        n = int((probs[row][order].cumsum(0) < 0.5).sum()) + 1
        assert set(order[:n].tolist()) == set(p[row].nonzero()[:, 0].tolist())
    m = kept(generation.Sampling(min_p=0.3))
    assert torch.equal(m, probs >= 0.3 * probs.amax(-1, keepdim=True))
    seen = torch.zeros(4, 50, dtype=torch.bool)
    seen[:, :10] = True
    out = generation.process_logits(logits, generation.Sampling(repetition_penalty=2.0, temperature=0.5), seen)
    ref = torch.where(seen, torch.where(logits > 0, logits / 2, logits * 2), logits) / 0.5
    torch.testing.assert_close(out, ref)
    assert torch.equal(generation.choose(logits, generation.Sampling(temperature=0), None), logits.argmax(-1))


# -- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("options,match", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(temperature=-0.5), "temperature"), (dict(min_p=2.0), "min_p"), (dict(repetition_penalty=0.0),
                                                                         "repetition_penalty"),
    (dict(eos_token=VOCAB), "eos_token"), (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_bad_sampling_options_name_the_argument(options, match):
    model = lm({"name": "scaled_dot_product"}, "vocab")
    n = options.pop("max_new_tokens", 3)
    with pytest.raises(ValueError, match=match):
        model.generate([[1, 2]], n, **options)


def test_bad_prompts_are_refused_with_the_numbers():
    model = lm({"name": "scaled_dot_product"}, "vocab")
    with pytest.raises(ValueError, match=r"41 tokens.*max_seq_len=40"):
        model.generate(torch.zeros(1, 41, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"max_new_tokens=10 after a prompt of 31 tokens needs 41 "
                                         r"positions, more than model.max_seq_len=40"):
        model.generate(torch.zeros(1, 31, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate(torch.zeros(2, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate([], 3)
    with pytest.raises(ValueError, match="prompt sequence 1 is empty"):
        model.generate([[1], []], 3)
    with pytest.raises(ValueError, match=rf"prompt holds token {VOCAB}, outside the vocabulary \[0, {VOCAB}\)"):
        model.generate([[1, VOCAB]], 3)
    with pytest.raises(ValueError, match="token -1"):
        model.generate(torch.tensor([[-1, 2]]), 3)
    with pytest.raises(ValueError, match="padding must be left padding"):
        model.generate(torch.tensor([[1, 2]]), 3, padding=torch.tensor([[False, True]]))


def test_a_cache_for_another_batch_or_dtype_is_refused():
    model = lm({"name": "scaled_dot_product"}, "vocab")
    with pytest.raises(ValueError, match="cache was built for batch size 2, got a batch of 3"):
        model.generate(PROMPTS, 3, cache=model.make_cache(2, 20))
    with pytest.raises(ValueError, match="cache was built for dtype torch.float32"):
        model.generate(PROMPTS, 3, cache=model.make_cache(3, 20, dtype=torch.float32))
    with pytest.raises(ValueError, match="cache holds 8 tokens per sequence; 10 are needed"):
        model.generate(PROMPTS, 3, cache=model.make_cache(3, 8))
    assert isinstance(model.make_cache(3, 20), KVCache)


def test_attentions_that_cannot_decode_say_so_before_the_first_token():
    tried = 0
    for name in registry("attention").names():
        if getattr(registry("attention").get(name).cls, "supports_decoding", False):
            continue
        try:
            model = lm({"name": name}, "vocab")
        except (ValueError, TypeError):
            continue  # not buildable as a causal LM at all
        tried += 1
        streamed: list[torch.Tensor] = []
        with pytest.raises(ValueError, match=rf"attention '{name}' cannot decode incrementally"):
            model.generate([[1, 2, 3]], 2, on_token=streamed.append)
        assert not streamed
        assert "decoding=False" in blockzoo.describe("attention", name)
    assert tried >= 3
    assert "decoding=True" in blockzoo.describe("attention", "local")


def test_encoder_only_model_has_no_lm_head():
    model = blockzoo.build_model(dict(name="encoder_classifier", vocab_size=VOCAB, dim_model=32, num_heads=4,
                                      num_layers=1, max_seq_len=16, num_classes=3))
    with pytest.raises(ValueError, match="has no language-model head"):
        model.generate(torch.tensor([[1, 2]]), 3)


def test_positions_contract_of_embeddings_and_rotary():
    from blockzoo.blocks.embedding.rotary import Rotary

    torch.manual_seed(0)
    rot = Rotary(8)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(rot(x, torch.arange(5)), rot(x))
    shifted = torch.stack([torch.arange(5), torch.arange(2, 7)])  # (B, L): row 1 starts at position 2
    wide = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(rot(wide, None)[1:, :, 2:], rot(wide[1:, :, 2:], shifted[1:]))
    cos, sin = rot.cos_sin(shifted, torch.float64)
    assert cos.shape == sin.shape == (2, 5, 8)
    for name in ("vocab", "sine", "learnable"):
        emb = blockzoo.build("embedding", name, vocab_size=VOCAB, dim_model=16, max_seq_len=12).double().eval()
        tokens = torch.randint(0, VOCAB, (2, 12))
        full = emb(tokens)
        torch.testing.assert_close(emb(tokens[:, 4:9], torch.arange(4, 9).expand(2, 5)), full[:, 4:9])
