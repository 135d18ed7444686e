"""Curation: raw media to scored, filtered, captioned WebDataset shards, locally or on Ray."""
