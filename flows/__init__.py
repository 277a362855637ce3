"""Prompt flows of the project (flows/chat)."""
