"""Text encoders: captions → token embeddings ``[B, L, dim]`` + mask ``[B, L]``."""

from lvdm.text.base import PretrainedTextEncoder, TextEncoder
from lvdm.text.clip import CLIPTextEncoder
from lvdm.text.llava_llama import LlamaPromptTextEncoder
from lvdm.text.pooled import PooledTextEncoder
from lvdm.text.t5 import T5TextEncoder
from lvdm.text.umt5 import UMT5TextEncoder
from lvdm.text.words import WordTextEncoder

__all__ = ["CLIPTextEncoder", "LlamaPromptTextEncoder", "PooledTextEncoder", "PretrainedTextEncoder", "T5TextEncoder",
           "TextEncoder", "UMT5TextEncoder", "WordTextEncoder"]
