"""Converters from published checkpoint layouts to :class:`lvdm.models.stdit.STDiT`, one
module per source format: :mod:`.pixart` (diffusers ``PixArtTransformer2DModel``),
:mod:`.latte` (diffusers ``LatteTransformer3DModel``), :mod:`.opensora` (Open-Sora's own
``.pth`` / ``.safetensors``: PixArt-α originals, STDiT v1.0, STDiT3 v1.2); and to
:class:`lvdm.models.dit.DiT`: :mod:`.dit_imagenet` (the ImageNet DiT of facebookresearch's ``.pt``
files and diffusers' ``DiTTransformer2DModel``); and to :class:`lvdm.models.mmdit.MMDiT`:
:mod:`.hunyuan` (diffusers ``HunyuanVideoTransformer3DModel``) and :mod:`.opensora2` (Open-Sora 2.0's
own checkpoint), each with ``mmdit_kwargs(config)``, and :mod:`.hunyuan_original` (Tencent's original
HunyuanVideo file); and to diffusers' ``WanTransformer3DModel`` (inside
:class:`~lvdm.models.diffusers_adapter.WanBackbone`): :mod:`.wan_original` (the Wan repository's own
files). The ``*_original`` tables are also the names of the original-layout LoRA files.

Each exposes ``convert_state_dict(state_dict) -> state_dict`` (pure key / shape mapping) and,
where the source carries a config, ``stdit_kwargs(config) -> dict`` for the STDiT constructor.
"""
