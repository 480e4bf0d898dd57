"""``python -m blockzoo.generate``: samples from a checkpoint that ``blockzoo.train`` wrote, in a subprocess."""
import codecs

import blockzoo
from blockzoo.generate import quote
from cli_helpers import TINY, check, run_app


def test_generate_samples_from_a_trained_checkpoint(tmp_path):
    run = tmp_path / "run"
    check(run_app([*TINY, "model.max_seq_len=64", "task.seq_len=32", "task.max_bytes=200000", "trainer.steps=3",
                   "trainer.eval_every=0", f"hydra.run.dir={run}"], cwd=tmp_path))
    proc = check(run_app([str(run), 'prompt=def fib(', "max_new_tokens=20", "temperature=0"],
                         cwd=tmp_path, module="blockzoo.generate"))
    assert proc.stdout.startswith("def fib(")
    model = blockzoo.load(run / "checkpoint")
    prompt = list(b"def fib(")
    new = model.generate([prompt], 20, temperature=0)[0, len(prompt):].tolist()
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(bytes(new), final=True)
    assert proc.stdout == "def fib(" + text + "\n"
    assert not (tmp_path / "outputs").exists()  # sampling writes no Hydra output folder
    again = check(run_app([f"checkpoint={run / 'checkpoint'}", "prompt=it's", "max_new_tokens=5", "seed=1",
                           "top_k=10", "top_p=0.9", "stream=false"], cwd=tmp_path, module="blockzoo.generate"))
    assert again.stdout.startswith("it's") and len(again.stdout.encode()) >= len("it's") + 1


def test_generate_refuses_bad_input_naming_it(tmp_path):
    bad = run_app([str(tmp_path), "prompt=x"], cwd=tmp_path, module="blockzoo.generate")
    assert bad.returncode != 0 and "holds no model" in bad.stdout + bad.stderr
    model = blockzoo.build_model(dict(name="decoder_lm", vocab_size=256, dim_model=16, num_heads=2, num_layers=1,
                                      max_seq_len=16))
    blockzoo.save(model, tmp_path / "ckpt")
    for args, message in ((["top_p=2"], "top_p must be in (0, 1]"), (["tokenizer=idz"], "did you mean 'ids'"),
                          (["max_new_tokens=20"], "max_seq_len=16")):
        proc = run_app([str(tmp_path / "ckpt"), "prompt=abc", *args], cwd=tmp_path, module="blockzoo.generate")
        assert proc.returncode != 0 and message in proc.stdout + proc.stderr, (args, proc.stderr[-2000:])


def test_quote_keeps_any_text_through_hydra_overrides():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for text in ["def fib(", "it's", "a\\nb", "end\\", "x\\'y", "a=b, c [d]"]:
        assert parser.parse_override("prompt=" + quote(text)).value() == text
