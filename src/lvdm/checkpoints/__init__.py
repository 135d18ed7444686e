"""Checkpoints: safe loading of any checkpoint (the one stored-recipe builder), export to safetensors, atomic run checkpoints, and starting a model from another one's weights."""
