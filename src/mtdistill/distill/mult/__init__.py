"""Losses of the multimodal-to-unimodal system: the MulT objective, CRD and EDAM (registered in the MulT family)."""
