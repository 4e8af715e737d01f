"""Torch side of the pipeline: the NotaGen model, checkpoint loading, the reference generator."""
