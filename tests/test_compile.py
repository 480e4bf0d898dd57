"""The whole model traces under torch.compile(fullgraph=True) with the torch paths, with no recompiles."""
import torch
import torch._dynamo

import blockzoo


def test_tiny_lm_compiles_fullgraph_without_recompiles():
    model = blockzoo.build_model({"name": "decoder_lm", "dim_model": 32, "num_layers": 2, "num_heads": 4,
                                  "vocab_size": 19, "max_seq_len": 16, "dropout": 0.1,
                                  "feedforward": {"name": "fused_mlp", "dropout": 0.1}})
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    with blockzoo.ops.force("torch"):
        compiled = torch.compile(model.loss, fullgraph=True, backend="aot_eager")
        for step in range(3):
            tokens = torch.randint(0, 19, (2, 16))
            loss = compiled({"tokens": tokens, "targets": torch.roll(tokens, -1, 1)})
            loss.backward()
            assert torch.isfinite(loss)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    model.eval()
    with blockzoo.ops.force("torch"):
        tokens = torch.randint(0, 19, (2, 16))
        batch = {"tokens": tokens, "targets": tokens}
        assert torch.allclose(torch.compile(model.loss, fullgraph=True, backend="aot_eager")(batch), model.loss(batch))
