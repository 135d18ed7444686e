"""HunyuanVideo's text encoder: a (LLaVA-)Llama decoder read through a prompt template."""

from __future__ import annotations

from typing import Optional

import torch
from transformers import LlamaModel

from lvdm.text.base import PretrainedTextEncoder, adapter_grad
from lvdm.utils import to_device_async

#: HunyuanVideo's video prompt template (its ``PROMPT_TEMPLATE["dit-llm-encode-video"]``, also
#: diffusers' ``HunyuanVideoPipeline`` default); its first 95 Llama-3 tokens are cut from the output.
HUNYUAN_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)


class LlamaPromptTextEncoder(PretrainedTextEncoder):
    """Frozen ``transformers`` Llama model whose hidden state ``hidden_layer`` (HunyuanVideo: the
    third from last) over the templated caption are the tokens, the template's first ``crop_start``
    tokens cut off: what ``HunyuanVideoPipeline`` feeds its transformer (with the mask).

    Args:
        pretrained: local folder or hub id (e.g. ``hunyuanvideo-community/HunyuanVideo`` with
            ``tokenizer`` / ``text_encoder`` subfolders). A local path that does not exist fails
            at once, naming it.
        max_length: tokens per caption after the crop (HunyuanVideo: 256); the tokenizer pads or
            cuts the templated caption to ``max_length + crop_start``.
        template: the prompt template, ``{}`` where the caption goes.
        crop_start: template tokens cut from the front (HunyuanVideo's 95 for Llama-3's
            tokenizer); None: the template's token count less 2 (its ``{}`` and end token), as
            diffusers computes it.
        hidden_layer: which of ``hidden_states`` are the tokens (-3: two layers skipped).
        dtype: weight dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        tokenizer_subfolder: folder of the tokenizer inside ``pretrained`` (None: ``pretrained``).
        encoder_subfolder: folder of the model inside ``pretrained`` (None: ``pretrained``).
    """

    def __init__(self, pretrained: str, max_length: int = 256, template: str = HUNYUAN_TEMPLATE,
                 crop_start: Optional[int] = 95, hidden_layer: int = -3, dtype: str = "float32",
                 tokenizer_subfolder: str | None = None, encoder_subfolder: str | None = None):
        if "{}" not in template:
            raise ValueError(f"LlamaPromptTextEncoder.template must hold {{}} where the caption goes; got {template!r}")
        super().__init__(LlamaModel, pretrained, max_length, dtype, tokenizer_subfolder, encoder_subfolder)
        self.template, self.hidden_layer = template, int(hidden_layer)
        self.crop_start = len(self.tokenizer(template)["input_ids"]) - 2 if crop_start is None else int(crop_start)
        if self.crop_start < 0:
            raise ValueError(f"LlamaPromptTextEncoder.crop_start must be >= 0, got {self.crop_start}")

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Templated captions → (``input_ids``, bool mask) of ``max_length + crop_start`` tokens."""
        batch = self.tokenizer([self.template.format(c) for c in captions], padding="max_length", truncation=True,
                               max_length=self.max_length + self.crop_start, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"].bool()

    @adapter_grad
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(captions)
        device = self.model.device
        ids, mask = to_device_async(ids, device), to_device_async(mask, device)
        hidden = self.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        tokens, mask = hidden[self.hidden_layer][:, self.crop_start:], mask[:, self.crop_start:].clone()
        mask[:, 0] |= ~mask.any(dim=1)  # the contract: every caption has a real token
        return tokens, mask
