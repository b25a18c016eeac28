"""Importers for official checkpoints and configs (detectron2 layouts) that need no detectron2."""
