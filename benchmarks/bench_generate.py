"""Generation throughput: blockzoo's key/value-cache decoding against re-running the window, and against HF
transformers' ``generate`` (dynamic cache eager; static cache + torch.compile) on a model of the same size.

Sections (``--sections``, comma-separated):

- ``context``: ms per new token against context length 256..8192, with the cache and with the window re-run
  (``use_cache=False``, the pre-cache behaviour): the cache's cost grows linearly with the context, the re-run's
  faster. ``--cpu`` runs it small on the CPU (the only section there) and writes a CPU results file.
- ``peers`` (GPU): bf16 Llama-style model of gpt_small's size (768 x 12, 12 heads, vocab 50304; rotary,
  RMSNorm, SwiGLU, no biases) with random weights, batch 1 and 8, prompt 512, 256 new tokens, greedy: blockzoo
  eager and ``compile=True`` against HF ``LlamaForCausalLM`` eager (dynamic cache) and static cache +
  ``torch.compile(mode="reduce-overhead")``. Targets: compile >= 3x HF eager and >= 1.0x HF static+compile;
  eager >= 1.0x HF eager (``ratio`` = peer_ms / ours_ms, time per new token).
- ``window`` (GPU): a local-window model (window 256) decodes 32K tokens past its window; peak memory after 1K
  and after 32K new tokens (``peer_ms`` / ``ours_ms`` hold MiB there): constant memory.

``transformers`` is imported only by ``peers``. Usage::

    python benchmarks/bench_generate.py                 # every GPU section, writes results/<date>-<gpu>-generate.json
    python benchmarks/bench_generate.py --cpu           # the small CPU context sweep, results/<date>-cpu-generate.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import blockzoo
from common import RESULTS, command, print_table, row, run_sections

GPT_SMALL = dict(dim_model=768, num_layers=12, num_heads=12, vocab_size=50304)
LLAMA_PARTS = dict(embedding={"name": "rotary"}, norm={"name": "rms_norm"}, feedforward={"name": "swiglu"},
                   bias=False, tie_embeddings=False)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], reps: int = 3) -> float:
    """Median wall time of ``fn()`` in ms (the device synchronised)."""
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def per_token_ms(gen: Callable[[int], object], new: int, reps: int = 3) -> float:
    """ms per decoded token: (time for ``new`` tokens - time for 1) / (new - 1), so the prompt is not counted."""
    gen(1)  # warm-up: compilation, and a static cache's size for each length
    gen(new)
    return (timed(lambda: gen(new), reps) - timed(lambda: gen(1), reps)) / (new - 1)


def build(device: str, dtype: torch.dtype, max_seq_len: int, **cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    model = blockzoo.build_model(dict(name="decoder_lm", max_seq_len=max_seq_len, **cfg))
    return model.to(device=device, dtype=dtype).eval()


@torch.no_grad()
def context_section(rows: list[dict], cpu: bool) -> None:
    """One new token at context ``ctx``: a cached decode step (the prompt prefilled untimed) against one
    re-run of the whole window (what each token cost before the cache)."""
    device, dtype = ("cpu", torch.float32) if cpu else ("cuda", torch.bfloat16)
    size = dict(dim_model=128, num_layers=2, num_heads=4, vocab_size=256) if cpu else GPT_SMALL
    lengths = [256, 512, 1024, 2048, 4096, 8192]
    steps = 16 if cpu else 64
    model = build(device, dtype, max(lengths) + steps + 1, embedding={"name": "rotary"}, **size)
    tok = torch.randint(0, size["vocab_size"], (1, 1), device=device)
    for ctx in lengths:
        prompt = torch.randint(0, size["vocab_size"], (1, ctx), device=device)
        cache = model.make_cache(1, ctx + steps)
        model(prompt, positions=torch.arange(ctx, device=device), cache=cache)
        times = []
        for i in range(steps):
            pos = torch.full((1, 1), ctx + i, device=device)
            times.append(timed(lambda: model.last_logits(tok, pos, None, cache), reps=1))
            cache.advance(1)
        ours = sorted(times)[len(times) // 2]
        model.last_logits(prompt, None, None, None)  # warm-up
        peer = timed(lambda: model.last_logits(prompt, None, None, None), reps=1 if cpu and ctx >= 2048 else 3)
        r = row(f"context {ctx}, batch 1, ms/token", "window_rerun", peer, ours)
        r["tokens_per_s"] = round(1e3 / ours, 1)
        rows.append(r)
        print(f"context {ctx}: cache {ours:.3f} ms/token, window re-run {peer:.3f} ms/token", flush=True)


def hf_llama(dtype: torch.dtype) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden = blockzoo.build("feedforward", "swiglu", dim_model=GPT_SMALL["dim_model"]).cfg.hidden()
    cfg = LlamaConfig(vocab_size=GPT_SMALL["vocab_size"], hidden_size=GPT_SMALL["dim_model"],
                      intermediate_size=hidden, num_hidden_layers=GPT_SMALL["num_layers"],
                      num_attention_heads=GPT_SMALL["num_heads"], num_key_value_heads=GPT_SMALL["num_heads"],
                      max_position_embeddings=2048, tie_word_embeddings=False, attention_bias=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device="cuda", dtype=dtype).eval()


def peers_section(rows: list[dict]) -> None:
    dtype, prompt_len, new = torch.bfloat16, 512, 256
    ours = build("cuda", dtype, 2048, **GPT_SMALL, **LLAMA_PARTS)
    hf = hf_llama(dtype)
    hf_compiled = hf_llama(dtype)
    hf_compiled.generation_config.cache_implementation = "static"
    hf_compiled.forward = torch.compile(hf_compiled.forward, mode="reduce-overhead", fullgraph=True)
    for batch in (1, 8):
        prompt = torch.randint(0, GPT_SMALL["vocab_size"], (batch, prompt_len), device="cuda")
        mask = torch.ones_like(prompt)

        def hf_gen(model: torch.nn.Module, n: int) -> object:
            with torch.no_grad():
                return model.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, pad_token_id=0)

        times = {
            "hf_eager": per_token_ms(lambda n: hf_gen(hf, n), new),
            "hf_static_compile": per_token_ms(lambda n: hf_gen(hf_compiled, n), new),
            "eager": per_token_ms(lambda n: ours.generate(prompt, n, temperature=0), new),
            "compile": per_token_ms(lambda n: ours.generate(prompt, n, temperature=0, compile=True), new),
        }
        case = f"batch {batch}, prompt {prompt_len}, {new} new, bf16 greedy, ms/token"
        rows.append(row(f"{case} [blockzoo compile]", "hf_eager", times["hf_eager"], times["compile"], target=3.0))
        rows.append(row(f"{case} [blockzoo compile]", "hf_static_compile", times["hf_static_compile"],
                        times["compile"], target=1.0))
        rows.append(row(f"{case} [blockzoo eager]", "hf_eager", times["hf_eager"], times["eager"], target=1.0))
        print(f"batch {batch}: " + ", ".join(f"{k} {v:.3f} ms/token ({1e3 * batch / v:.0f} tok/s)"
                                            for k, v in times.items()), flush=True)


def window_section(rows: list[dict]) -> None:
    window, prompt_len, short, long = 256, 512, 1024, 32768
    model = build("cuda", torch.bfloat16, 1024, dim_model=768, num_layers=4, num_heads=12, vocab_size=50304,
                  embedding={"name": "rotary"}, attention={"name": "local", "window_size": window})
    prompt = torch.randint(0, 50304, (1, prompt_len), device="cuda")
    peaks = {}
    for n in (short, long):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        model.generate(prompt, n, temperature=0, compile=True)
        sync()
        peaks[n] = (torch.cuda.max_memory_allocated() / 2**20, (time.perf_counter() - t0) / n * 1e3)
    r = row(f"local window {window}: peak MiB after {short} vs {long} new tokens (ours_ms: MiB at {long})",
            f"peak_MiB_{short}", peaks[short][0], peaks[long][0], target=0.98)
    r["ms_per_token_32k"] = round(peaks[long][1], 4)
    rows.append(r)
    print(f"local window: peak {peaks[short][0]:.1f} MiB at {short}, {peaks[long][0]:.1f} MiB at {long}; "
          f"{peaks[long][1]:.3f} ms/token", flush=True)


def write_cpu_results(rows: list[dict]) -> Path:
    today = datetime.date.today().isoformat()
    meta = {"date": today, "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
            "torch": torch.__version__, "python": platform.python_version(),
            "unit": "ms per new token (peer_ms / ours_ms)",
            "note": "a shared 2-core CPU host, other jobs running: times are noisy; the GPU rows are the measure",
            "command": command()}
    path = RESULTS / f"{today}-cpu-generate.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the small CPU context sweep only")
    parser.add_argument("--sections", default="context,peers,window")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    rows: list[dict] = []
    if args.cpu:
        torch.set_num_threads(1)  # a small shared CPU: one thread gives steadier times
        context_section(rows, cpu=True)
        failed = []
    else:
        if not torch.cuda.is_available():
            print("bench_generate.py needs a CUDA GPU (or --cpu)", file=sys.stderr)
            return 1
        sections = {"context": lambda: context_section(rows, cpu=False), "peers": lambda: peers_section(rows),
                    "window": lambda: window_section(rows)}
        failed = run_sections(sections, args.sections)
    print_table(rows)
    if rows and not args.no_write:
        if args.cpu:
            print(f"wrote {write_cpu_results(rows)}")
        else:
            from common import write_results

            print(f"wrote {write_results('generate', rows)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
