"""Lightning callbacks, one file per concern; add them to a recipe by ``class_path``."""
