"""wsis: weakly supervised instance segmentation from image tags (or boxes plus a few masks)."""
from wsis.structures import ImageRecord, Instances, RecordSet

__version__ = "0.1.0"
__all__ = ["ImageRecord", "Instances", "RecordSet", "__version__"]
