"""Grad-CAM++: channel weights from positive gradients weighted by higher-order terms.

Chattopadhyay, A., Sarkar, A., Howlader, P. & Balasubramanian, V. N. (2018). "Grad-CAM++:
Generalized Gradient-Based Visual Explanations for Deep Convolutional Networks." WACV 2018,
pp. 839-847. arXiv:1710.11063.

With the class score taken as ``exp(S)`` (S the logit), the second and third derivatives become
powers of the first (eq. 19 of the paper) and the exp factors cancel, so only first-order
gradients g = dS/dA are needed -- the form pytorch-grad-cam implements:

    alpha^k_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3)          (0 where g = 0)
    w_k        = sum_ij alpha^k_ij ReLU(g^k_ij)

For g != 0 the fraction is ``1 / (2 + sum_ab A^k_ab g)``, which is how it is computed: no
epsilon is needed (0 where that denominator is 0). An absolute epsilon on the g^2 form (1e-7, as
pytorch-grad-cam adds) swamps small gradients: the five-member headct_real ensemble's are about
1e-4, so 2 g^2 ~ 2e-8, and such a guard turned every alpha into g^2 / 1e-7, another method.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from hemo.cam.base import BaseCAM


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018), with the exp(logit) closed form."""

    name = "gradcam++"

    def weights(
        self, activations: NDArray[np.float32], gradients: NDArray[np.float32]
    ) -> NDArray[np.float32]:
        """Channel weights w_k from alpha-weighted positive gradients.

        Args:
            activations: float32 (N, h, w, C) target-layer activations A.
            gradients: float32 (N, h, w, C) d logit / d A.

        Returns:
            float32 (N, 1, 1, C) channel weights.
        """
        grads = gradients.astype(np.float64)
        sum_activations = activations.astype(np.float64).sum(axis=(1, 2), keepdims=True)
        scale = 2.0 + sum_activations * grads  # (2 g^2 + sum A g^3) / g^2
        defined = (grads != 0.0) & (scale != 0.0)
        alpha = np.where(defined, 1.0 / np.where(defined, scale, 1.0), 0.0)
        weights = np.sum(alpha * np.maximum(grads, 0.0), axis=(1, 2), keepdims=True)
        return weights.astype(np.float32)
