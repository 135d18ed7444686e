"""Text encoders: captions → token embeddings ``[B, L, dim]`` + mask ``[B, L]``."""

from lvdm.text.base import PretrainedTextEncoder, TextEncoder
from lvdm.text.clip import CLIPTextEncoder
from lvdm.text.t5 import T5TextEncoder
from lvdm.text.words import WordTextEncoder

__all__ = ["CLIPTextEncoder", "PretrainedTextEncoder", "T5TextEncoder", "TextEncoder", "WordTextEncoder"]
