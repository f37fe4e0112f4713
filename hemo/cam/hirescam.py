"""HiResCAM: element-wise gradient times activation, summed over channels.

Draelos, R. L. & Carin, L. (2020). "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks." arXiv:2011.08891.

    L_ij = ReLU(sum_k (d y / d A^k_ij) A^k_ij)

Unlike Grad-CAM the gradients are not averaged over space, so the map shows exactly which
locations raised the score (for a model ending in global average pooling and a Dense layer it is
the class activation map of Zhou et al. 2016 up to a constant).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from hemo.cam.base import BaseCAM


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin 2020): the gradients themselves weight each activation."""

    name = "hirescam"

    def weights(
        self, activations: NDArray[np.float32], gradients: NDArray[np.float32]
    ) -> NDArray[np.float32]:
        """The gradients, element by element (no spatial averaging).

        Args:
            activations: float32 (N, h, w, C); unused by this method.
            gradients: float32 (N, h, w, C) d logit / d A.

        Returns:
            float32 (N, h, w, C) element weights.
        """
        return gradients.astype(np.float32, copy=False)
