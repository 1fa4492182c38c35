"""NAPO: fine-tune LLMs as recommenders with negative-aware preference optimization."""

__version__ = "0.1.0"
