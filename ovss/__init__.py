"""ovss: open-vocabulary semantic segmentation, every method exact to its paper and official code.

    import ovss
    seg = ovss.create_segmenter("sclip", model="ViT-B-16", pretrained="openai")
    res = seg.predict("street.jpg", classes=["car", "road", "tree"])
    res.scores  # (C, H, W) float32 on the CPU (res.score_kind says what they are)
    res.labels  # (H, W) int64
"""

from .errors import DatasetError, InputError, ModelLoadError, OvssError, UnknownNameError
from .registry import available_methods, create_segmenter, method_info
from .segmenter import Capabilities, SegmentationResult, Segmenter
from .vocabulary import Vocabulary, parse_classes

__version__ = "0.1.0"

__all__ = [
    "DatasetError", "InputError", "ModelLoadError", "OvssError", "UnknownNameError",
    "available_methods", "create_segmenter", "method_info",
    "Capabilities", "SegmentationResult", "Segmenter", "Vocabulary", "parse_classes", "__version__",
]
