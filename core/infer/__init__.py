"""Inference: engines, chat, the OpenAI-compatible server."""
