"""nn.Modules users assemble; importing this package registers every built-in component."""
from blockzoo.blocks import attention, embedding, feedforward, norm  # noqa: F401
from blockzoo.blocks import block, model  # noqa: F401
from blockzoo.blocks import aux_loss, hierarchical, reversible  # noqa: F401
from blockzoo.blocks.activations import SmeLU  # noqa: E402
from blockzoo.blocks.fused import FusedDropoutBias, FusedLinear  # noqa: E402
from blockzoo.blocks.multi_head import MultiHeadAttention  # noqa: E402
from blockzoo.blocks.projection import EmbeddingProjection, InputProjection  # noqa: E402
from blockzoo.blocks.simplicial import SimplicialEmbedding  # noqa: E402

__all__ = ["FusedLinear", "FusedDropoutBias", "InputProjection", "EmbeddingProjection", "SimplicialEmbedding",
           "SmeLU", "MultiHeadAttention"]
