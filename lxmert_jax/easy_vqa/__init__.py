"""easy-VQA for LXMERT: a pixel "detector" giving region features, boxes and labels per image.

``extract_regions(image_or_png_path, img_id, num_boxes=36, scaling=...)`` returns the record
schema's ``ImageFeatures`` (36 boxes x 90-d features); ``tfrecords_tools.easy_vqa`` converts
the whole dataset. See docs/easy_vqa_features.md for the design and measurements.
"""

from lxmert_jax.easy_vqa.features import (
  FEATURE_DIM,
  FEATURE_GROUPS,
  FeatureScaling,
  extract_files,
  extract_regions,
  load_image,
)
from lxmert_jax.easy_vqa.regions import ATTR_CLASSES, MAX_BOXES, OBJECT_CLASSES, detect

__all__ = [
  "ATTR_CLASSES",
  "FEATURE_DIM",
  "FEATURE_GROUPS",
  "MAX_BOXES",
  "OBJECT_CLASSES",
  "FeatureScaling",
  "detect",
  "extract_files",
  "extract_regions",
  "load_image",
]
