"""Fused linear + loss heads: a ``[D, V]`` classifier and any multiclass
registry loss, computed block by block so that no ``[N, V]`` logits array is
ever live (large vocabularies, extreme classification).

``fused_linear_loss(hidden, weight, labels, loss=...)`` and its shorthand
``fused_linear_cross_entropy``; ``nnx_head(linear)`` for a Flax model's last
layer; ``fused_losses()`` lists the losses with a fused form.
"""

from lossjax.fused._head import default_strategy
from lossjax.fused._head import fused_linear_cross_entropy
from lossjax.fused._head import fused_linear_loss
from lossjax.fused._head import fused_losses
from lossjax.fused._nnx import nnx_head

__all__ = ["default_strategy", "fused_linear_cross_entropy", "fused_linear_loss", "fused_losses", "nnx_head"]
