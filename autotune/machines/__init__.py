"""Saved hardware profiles: what models tuned to on each machine, similarity between machines, and comparing them side by side."""
