"""lossjax: fast, safe, per-example classification losses for JAX.

>>> import jax.numpy as jnp, lossjax
>>> logits, labels = jnp.array([[2.0, 0.5, -1.0]]), jnp.array([0])
>>> lossjax.reduction.mean(lossjax.softmax_cross_entropy_with_integer_labels(logits, labels))
Array(0.24..., dtype=float32)
"""

from lossjax import fused
from lossjax import losses
from lossjax import reduction
from lossjax.checking import checked
from lossjax.checking import label_checks
from lossjax.fused import fused_linear_cross_entropy
from lossjax.fused import fused_linear_loss
from lossjax.losses import brier_loss
from lossjax.losses import class_balanced_weights
from lossjax.losses import convex_kl_divergence
from lossjax.losses import ctc_loss
from lossjax.losses import ctc_loss_with_forward_probs
from lossjax.losses import generalized_cross_entropy
from lossjax.losses import generalized_kl_divergence
from lossjax.losses import hinge_loss
from lossjax.losses import kl_divergence
from lossjax.losses import kl_divergence_with_log_targets
from lossjax.losses import mean_absolute_error_probs
from lossjax.losses import mean_squared_error_logits
from lossjax.losses import multiclass_hinge_loss
from lossjax.losses import multiclass_perceptron_loss
from lossjax.losses import multiclass_sparsemax_loss
from lossjax.losses import multiclass_squared_hinge_loss
from lossjax.losses import perceptron_loss
from lossjax.losses import poly_loss_cross_entropy
from lossjax.losses import safe_softmax_cross_entropy
from lossjax.losses import sigmoid_binary_cross_entropy
from lossjax.losses import sigmoid_focal_loss
from lossjax.losses import sigmoid_squared_error
from lossjax.losses import softmax_cross_entropy
from lossjax.losses import softmax_cross_entropy_with_integer_labels
from lossjax.losses import softmax_focal_loss
from lossjax.losses import sparsemax
from lossjax.losses import sparsemax_loss
from lossjax.losses import squared_error

__version__ = "0.1.0"
