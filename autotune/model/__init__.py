"""The model file: loading and checking it, how a batch meets the model, and models given as Python objects."""
