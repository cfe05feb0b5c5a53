"""lossjax's losses and their registry.

Each loss returns per-example values; reduce them with ``lossjax.reduction``.
``get(name)`` returns a registered loss with its hyper-parameters bound;
``names()`` lists them.
"""

from lossjax.losses._binary import sigmoid_binary_cross_entropy
from lossjax.losses._binary import sigmoid_focal_loss
from lossjax.losses._binary import sigmoid_squared_error
from lossjax.losses._cross_entropy import generalized_cross_entropy
from lossjax.losses._cross_entropy import poly_loss_cross_entropy
from lossjax.losses._cross_entropy import safe_softmax_cross_entropy
from lossjax.losses._cross_entropy import softmax_cross_entropy
from lossjax.losses._cross_entropy import softmax_cross_entropy_with_integer_labels
from lossjax.losses._cross_entropy import softmax_focal_loss
from lossjax.losses._ctc import ctc_loss
from lossjax.losses._ctc import ctc_loss_with_forward_probs
from lossjax.losses._divergence import convex_kl_divergence
from lossjax.losses._divergence import generalized_kl_divergence
from lossjax.losses._divergence import kl_divergence
from lossjax.losses._divergence import kl_divergence_with_log_targets
from lossjax.losses._margin import hinge_loss
from lossjax.losses._margin import multiclass_hinge_loss
from lossjax.losses._margin import multiclass_perceptron_loss
from lossjax.losses._margin import multiclass_squared_hinge_loss
from lossjax.losses._margin import perceptron_loss
from lossjax.losses._registry import LossSpec
from lossjax.losses._registry import get
from lossjax.losses._registry import names
from lossjax.losses._registry import register
from lossjax.losses._registry import spec
from lossjax.losses._sparsemax import multiclass_sparsemax_loss
from lossjax.losses._sparsemax import sparsemax
from lossjax.losses._sparsemax import sparsemax_loss
from lossjax.losses._squared import brier_loss
from lossjax.losses._squared import mean_absolute_error_probs
from lossjax.losses._squared import mean_squared_error_logits
from lossjax.losses._squared import squared_error
from lossjax.losses._weights import class_balanced_weights

__all__ = [
    "LossSpec", "brier_loss", "class_balanced_weights", "convex_kl_divergence",
    "ctc_loss", "ctc_loss_with_forward_probs", "generalized_cross_entropy",
    "generalized_kl_divergence", "get", "hinge_loss", "kl_divergence",
    "kl_divergence_with_log_targets", "mean_absolute_error_probs",
    "mean_squared_error_logits", "multiclass_hinge_loss",
    "multiclass_perceptron_loss", "multiclass_sparsemax_loss",
    "multiclass_squared_hinge_loss", "names", "perceptron_loss",
    "poly_loss_cross_entropy", "register", "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy", "sigmoid_focal_loss",
    "sigmoid_squared_error", "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels", "softmax_focal_loss",
    "sparsemax", "sparsemax_loss", "spec", "squared_error",
]
