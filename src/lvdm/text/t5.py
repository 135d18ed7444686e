"""T5 encoder (Open-Sora / PixArt use T5-v1.1-XXL: 4096-wide tokens, 120 tokens per caption)."""

from __future__ import annotations

from transformers import T5EncoderModel

from lvdm.text.base import PretrainedTextEncoder


class T5TextEncoder(PretrainedTextEncoder):
    """Frozen ``transformers`` T5 encoder; the tokens are its last hidden state.

    Args:
        pretrained: local folder holding the tokenizer and the ``T5EncoderModel`` (as written by
            their ``save_pretrained``), or a hub id such as ``"DeepFloyd/t5-v1_1-xxl"``.
        max_length: tokens per caption (padded/truncated).
        dtype: weight dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        tokenizer_subfolder: folder of the tokenizer inside ``pretrained`` (``"tokenizer"`` in a
            diffusers pipeline checkpoint); ``None`` for ``pretrained`` itself.
        encoder_subfolder: folder of the encoder inside ``pretrained`` (``"text_encoder"`` in a
            diffusers pipeline checkpoint); ``None`` for ``pretrained`` itself.
        attend_padding: the encoder reads the padding tokens too (no attention mask), as
            ``LTXPipeline`` runs its T5; the mask is still returned for the denoiser.
    """

    def __init__(
        self,
        pretrained: str,
        max_length: int = 120,
        dtype: str = "float32",
        tokenizer_subfolder: str | None = None,
        encoder_subfolder: str | None = None,
        attend_padding: bool = False,
    ):
        super().__init__(T5EncoderModel, pretrained, max_length, dtype, tokenizer_subfolder, encoder_subfolder)
        self.attend_padding = bool(attend_padding)
