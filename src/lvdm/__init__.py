"""lvdm: latent video diffusion transformers on PyTorch Lightning (see README.md's package map)."""

import logging

# bitsandbytes (the `lowmem` extra; diffusers and peft import it whenever it is installed) warns on
# every import on AVX512-bf16 CPUs that it could not fetch a 4-bit CPU kernel from the Hugging Face
# hub; lvdm uses only its 8-bit AdamW, which does not need that kernel.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
