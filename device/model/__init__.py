"""The model bundle: its validation, the LiteRT classifier, the label vocabulary, the installed models."""
