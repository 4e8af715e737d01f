"""notagen-trt: compile NotaGen symbolic-music models into fast inference engines.

Stages live in subpackages named for the pipeline: ``export`` (torch side), ``engines``
(precision variants and TensorRT plans), ``runtime`` (numpy + one backend, never torch).
"""

__version__ = "0.1.0"
