"""Models served by clusterai itself (extra `clusterai[llm]`): loading, and an Ollama- and
OpenAI-compatible server over them."""
