"""Backbones: how pretrained networks are found, loaded and run densely.

Methods live in :mod:`ovss.methods`; this package only knows about networks.
"""
