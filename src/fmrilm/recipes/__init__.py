"""Recipes: one end-to-end workflow per module (setup -> run -> save)."""
