"""hemo: a workbench for brain-hemorrhage detection on head CT.

The package runs headless: reading DICOM and images, Hounsfield units and windowing, datasets,
synthetic phantoms, training, evaluation, prediction and Grad-CAM explanations. The Streamlit
pages and the ``hemo`` CLI are thin skins over it.
"""

from __future__ import annotations

__version__ = "0.1.0"
