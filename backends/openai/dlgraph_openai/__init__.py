"""dlgraph backend for OpenAI-compatible servers: OpenAI, Azure OpenAI, vLLM, llama.cpp's
server and Ollama, chosen by `profile`.

    dg.connect("openai", base_url="http://127.0.0.1:8000/v1", model="m", profile="vllm")
"""

from dlgraph_openai.backend import OpenAIBackend
from dlgraph_openai.profiles import PROFILES, Profile

__all__ = ["PROFILES", "OpenAIBackend", "Profile"]
