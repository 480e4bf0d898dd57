"""``python -m blockzoo.generate``: sample from a checkpoint written by ``blockzoo.train`` (a Hydra app).

    python -m blockzoo.generate outputs/2026-01-01/12-00-00 prompt="def fib(" max_new_tokens=200
    python -m blockzoo.generate RUN_DIR prompt="import " temperature=0 compile=true

CHECKPOINT_DIR is a run folder (its newest whole ``checkpoint/`` is used) or a checkpoint folder itself. The
model's config and weights load through ``blockzoo.load`` (plugins recorded in the checkpoint are imported).
Byte-level models (the ``bytes_lm`` task, vocab 256) take a text prompt and stream text as it is produced; other
models take space-separated token ids and print ids.
"""
from __future__ import annotations

import codecs
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
import hydra
import torch
import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from blockzoo.ops.backend import BlockzooFallbackWarning
from blockzoo.suggest import close_matches

TOKENIZERS = ("auto", "bytes", "ids")


@dataclass
class GenerateConfig:
    """Options of ``python -m blockzoo.generate`` (the sampling ones as in ``DecoderLM.generate``)."""

    checkpoint: str = ""
    prompt: str = ""
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    eos_token: int | None = None
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    use_cache: bool = True  # false: re-run the window per token (attentions that cannot decode with a cache)
    tokenizer: str = "auto"
    stream: bool = True
    show_warnings: bool = False  # the PyTorch-fallback notes (stderr); hidden by default


ConfigStore.instance().store(name="blockzoo_generate", node=GenerateConfig)


def checkpoint_folder(path: str) -> Path:
    """The checkpoint to sample from: ``path`` itself when it holds a model, else its newest whole checkpoint."""
    from blockzoo.api import CONFIG_FILE, WEIGHTS_FILE
    from blockzoo.trainer.checkpoint import resumable

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"checkpoint {path!r} is not a folder")
    if (folder / WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file():
        return folder
    found = resumable(folder)
    if found is None:
        raise ValueError(f"checkpoint {path!r} holds no model ({WEIGHTS_FILE}) and no checkpoint/ folder")
    return found


def task_name(folder: Path) -> str | None:
    """The task of the run that wrote ``folder`` (its run's resolved config.yaml), when known."""
    for cfg_file in (folder.parent / "config.yaml", folder.parent / ".hydra" / "config.yaml"):
        if cfg_file.is_file():
            cfg = yaml.safe_load(cfg_file.read_text()) or {}
            task = cfg.get("task") if isinstance(cfg, dict) else None
            if isinstance(task, dict) and task.get("name"):
                return str(task["name"])
    return None


def pick_tokenizer(choice: str, folder: Path, vocab_size: int) -> str:
    if choice not in TOKENIZERS:
        raise ValueError(f"tokenizer={choice!r} is not one of {', '.join(TOKENIZERS)}"
                         f"{close_matches(choice, list(TOKENIZERS))}")
    if choice != "auto":
        return choice
    task = task_name(folder)
    return "bytes" if task == "bytes_lm" or (task is None and vocab_size == 256) else "ids"


def encode(prompt: str, tokenizer: str) -> list[int]:
    if tokenizer == "bytes":
        return list(prompt.encode("utf-8"))
    try:
        return [int(t) for t in prompt.split()]
    except ValueError:
        raise ValueError(f"prompt={prompt!r}: this model takes space-separated token ids "
                         "(tokenizer=ids); pass tokenizer=bytes for text") from None


def sample(cfg: DictConfig) -> str:
    """Load the checkpoint, generate, stream to stdout; return the generated text (or ids)."""
    import blockzoo

    opts: GenerateConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(GenerateConfig), cfg))
    if not opts.checkpoint:
        raise ValueError("give the checkpoint: python -m blockzoo.generate CHECKPOINT_DIR prompt=...")
    if not opts.show_warnings:
        warnings.simplefilter("ignore", BlockzooFallbackWarning)
    folder = checkpoint_folder(opts.checkpoint)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if opts.device == "auto" else opts.device
    model = blockzoo.load(folder, device=device)
    if getattr(model, "generation", None) != "lm":
        raise ValueError(f"checkpoint {opts.checkpoint!r} holds a {model.cfg.name!r} model; this command samples "
                         "decoder language models (decoder_lm)")
    tokenizer = pick_tokenizer(opts.tokenizer, folder, model.cfg.vocab_size)
    prompt = encode(opts.prompt, tokenizer)
    if not prompt:
        raise ValueError('prompt is empty: give prompt="..."')
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[str] = []

    def emit(column: torch.Tensor) -> None:
        token = int(column[0])
        piece = decoder.decode(bytes([token])) if tokenizer == "bytes" else f" {token}"
        pieces.append(piece)
        if opts.stream:
            sys.stdout.write(piece)
            sys.stdout.flush()

    if opts.stream:
        sys.stdout.write(opts.prompt)
    gen = torch.Generator().manual_seed(opts.seed)
    model.generate([prompt], opts.max_new_tokens, temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p,
                   min_p=opts.min_p, repetition_penalty=opts.repetition_penalty, eos_token=opts.eos_token,
                   generator=gen, compile=opts.compile, use_cache=opts.use_cache, on_token=emit)
    tail = decoder.decode(b"", final=True) if tokenizer == "bytes" else ""
    text = "".join(pieces) + tail
    sys.stdout.write((tail if opts.stream else opts.prompt + text) + "\n")
    sys.stdout.flush()
    return text


@hydra.main(config_path=None, config_name="blockzoo_generate", version_base="1.3")
def main(cfg: DictConfig) -> str:
    return sample(cfg)


TEXT_KEYS = ("prompt", "checkpoint")  # free text: quoted for Hydra's override grammar


def quote(value: str) -> str:
    """``value`` as a Hydra single-quoted string (quotes escaped, and the backslashes before them)."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value) + "'"


def cli(argv: list[str]) -> None:
    """``CHECKPOINT_DIR`` may come first, as a plain argument; the rest are Hydra overrides (``prompt=...`` and
    ``checkpoint=...`` taken as plain text, so ``prompt="def fib("`` works)."""
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):
        argv = [f"checkpoint={argv[0]}"] + argv[1:]
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if eq and key in TEXT_KEYS and not (len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""):
            argv[i] = f"{key}={quote(value)}"
    sys.argv[1:] = argv + ["hydra/job_logging=disabled", "hydra/hydra_logging=disabled", "hydra.run.dir=.",
                           "hydra.output_subdir=null"]
    try:
        main()
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    cli(sys.argv[1:])
