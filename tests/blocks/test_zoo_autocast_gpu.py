"""The zoo under autocast: every registered attention, feedforward, norm and embedding, in a model that can host it
(a decoder LM for mechanisms that can be causal, an encoder classifier for the rest, the hierarchical image model
for the patch embedding), runs forward and backward under autocast and lands near the same model in float32: loss,
gradient norm and each parameter's gradient norm within the autocast dtype's tolerance. Each attention is also
called directly with mixed-dtype q, k, v (float32 q and v, k in the autocast dtype) under autocast.

``pytest -m gpu``: CUDA under fp16 and bf16 autocast, the fast paths on. In CI: the CPU under bf16 autocast."""
import pytest
import torch
from helpers import TOL, rel_err

import blockzoo
from blockzoo.tasks.images import Images, ImagesConfig

pytestmark = pytest.mark.filterwarnings("ignore::blockzoo.BlockzooFallbackWarning",
                                        "ignore:Mismatch dtype between input and weight:UserWarning")
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
RUNS = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
        pytest.param("cuda", torch.float16, marks=GPU, id="cuda-fp16"),
        pytest.param("cuda", torch.bfloat16, marks=GPU, id="cuda-bf16")]
L, VOCAB, H, D = 16, 13, 4, 8  # L: a 4x4 grid and the models' max_seq_len, so every mechanism can run
TINY = ["model.dim_model=32", f"model.num_heads={H}", f"model.vocab_size={VOCAB}", f"model.max_seq_len={L}", "~task"]
IMAGES = ["model=hierarchical", "task=images", "task.image_size=16", "model.stage_dims=[8,16]",
          "model.stage_depths=[1,1]", "model.stage_heads=[1,2]"]


def components() -> list[tuple[str, str]]:
    return [(kind, name) for kind in ("attention", "feedforward", "norm", "embedding")
            for name in blockzoo.registry(kind).names()]  # registered classes (not presets)


def is_image(kind: str, name: str) -> bool:
    return (kind, name) == ("embedding", "patch")


def overrides(kind: str, name: str, device: str) -> list[str]:
    """compose() overrides of a small model hosting the component (one layer on the CPU, two on CUDA)."""
    if is_image(kind, name):
        return IMAGES
    host = ["model=tiny_lm"]
    if kind == "attention" and not blockzoo.registry("attention").get(name).cls.supports_causal:
        host = ["model=encoder_classifier", "model.num_classes=3"]
    return [*host, f"{kind}={name}", *TINY, f"model.num_layers={1 if device == 'cpu' else 2}"]


def batch_for(kind: str, name: str, device: str) -> dict[str, torch.Tensor]:
    if is_image(kind, name):
        batch = Images(ImagesConfig(name="images", image_size=16, num_classes=4)).batch("train", 0, 4)
    else:
        tokens = torch.randint(0, VOCAB, (2, L))
        batch = {"tokens": tokens, "targets": torch.roll(tokens, -1, 1), "label": torch.tensor([0, 2])}
    return {k: v.to(device) for k, v in batch.items()}


def loss_and_grad_norms(model: torch.nn.Module, batch: dict, device: str,
                        dtype: torch.dtype | None) -> tuple[float, dict[str, float]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss), loss
    norms = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), name
            norms[name] = float(p.grad.norm())
    return loss.item(), norms


@pytest.mark.parametrize("device,dtype", RUNS)
@pytest.mark.parametrize("kind,name", components(), ids=lambda v: v if isinstance(v, str) else None)
def test_component_trains_under_autocast_like_float32(kind, name, device, dtype):
    torch.manual_seed(0)
    model = blockzoo.build_model(blockzoo.compose(overrides(kind, name, device))).to(device).eval()  # no dropout
    batch = batch_for(kind, name, device)
    loss32, norms32 = loss_and_grad_norms(model, batch, device, None)
    loss, norms = loss_and_grad_norms(model, batch, device, dtype)
    tol = 2 * TOL[dtype]
    assert abs(loss - loss32) <= tol * abs(loss32)
    assert norms.keys() == norms32.keys()
    total32 = sum(v * v for v in norms32.values()) ** 0.5
    total = sum(v * v for v in norms.values()) ** 0.5
    assert abs(total - total32) <= tol * total32
    for pname, n32 in norms32.items():  # a parameter with a tiny share of the gradient is held to that share
        assert abs(norms[pname] - n32) <= 2 * tol * max(n32, 1e-2 * total32), pname


@pytest.mark.parametrize("device,dtype", RUNS)
@pytest.mark.parametrize("name", blockzoo.registry("attention").names())
def test_attention_called_with_mixed_dtypes_under_autocast(name, device, dtype):
    """As a component that projects only k inside the autocast region calls it (SDPA takes such inputs)."""
    torch.manual_seed(0)
    att = blockzoo.build("attention", name, num_heads=H, head_dim=D, max_seq_len=L).to(device).eval()
    causal = att.supports_causal
    q, k, v = (torch.randn(2, H, L, D, device=device, requires_grad=True) for _ in range(3))
    want = att(q, k, v, causal=causal)
    with torch.autocast(device, dtype=dtype):
        got = att(q, k.to(dtype), v, causal=causal)
    got.float().sum().backward()
    grads = [t.grad for t in (q, k, v) if t.grad is not None]  # fourier_mix, pooling, visual ignore q or k
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert rel_err(got.detach().float(), want.detach()) <= 2 * TOL[dtype]
