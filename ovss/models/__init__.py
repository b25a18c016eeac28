"""Trained segmentation heads in plain PyTorch (no detectron2): Mask2Former-style pixel and
transformer decoders, multi-scale deformable attention, and the networks built from them."""
