"""One module per method; each defines a :class:`ovss.segmenter.Segmenter` subclass."""
