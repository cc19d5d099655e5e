"""The LLM gateway: Ollama- and OpenAI-compatible endpoints that balance live requests across model servers."""
