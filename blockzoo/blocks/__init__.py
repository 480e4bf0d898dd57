"""nn.Modules users assemble; importing this package registers every built-in component."""
from blockzoo.blocks import attention, embedding, feedforward, norm  # noqa: F401
from blockzoo.blocks import block, model  # noqa: F401
from blockzoo.blocks import aux_loss, hierarchical, reversible  # noqa: F401
