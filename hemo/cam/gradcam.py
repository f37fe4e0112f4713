"""Grad-CAM: channel weights are the spatial mean of the gradients.

Selvaraju, R. R., Cogswell, M., Das, A., Vedantam, R., Parikh, D. & Batra, D. (2017).
"Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization." ICCV 2017,
pp. 618-626. arXiv:1610.02391.

    alpha_k = 1 / (h w) * sum_ij d y / d A^k_ij        L = ReLU(sum_k alpha_k A^k)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from hemo.cam.base import BaseCAM


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): global-average-pooled gradients as channel weights."""

    name = "gradcam"

    def weights(
        self, activations: NDArray[np.float32], gradients: NDArray[np.float32]
    ) -> NDArray[np.float32]:
        """Spatial mean of the gradients.

        Args:
            activations: float32 (N, h, w, C); unused by this method.
            gradients: float32 (N, h, w, C) d logit / d A.

        Returns:
            float32 (N, 1, 1, C) channel weights alpha_k.
        """
        return gradients.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
