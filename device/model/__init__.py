"""The model bundle: its validation, the LiteRT classifier, the label vocabulary, the installed models, and a field's
located cells classified in one batch (``analyzer``)."""
