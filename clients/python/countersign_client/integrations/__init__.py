"""Adapters that give agent frameworks Countersign-gated tools: ``langchain`` (LangChain
and LangGraph) and ``openai_agents`` (the OpenAI Agents SDK). Each needs its extra:
``pip install "countersign-client[langchain]"`` or ``"countersign-client[openai-agents]"``."""
