"""dist_llm: LLM pretraining from scratch, from one laptop CPU to many GPUs.

Importing the package is cheap and side-effect free: no torch import, no CUDA initialisation,
no process group. Each component lives in its own module and is imported where it is used.
"""

__version__ = "0.1.0"
