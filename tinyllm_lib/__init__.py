"""tinyllm_lib: a small, honest library for learning how LLMs are instruction-tuned."""

__version__ = "0.1.0"
