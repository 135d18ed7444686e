"""Fine-tuning a trained backbone: LoRA adapters through peft (:mod:`lvdm.finetune.lora`) and
adapter-only checkpoints, merge and export (:mod:`lvdm.finetune.adapter_files`)."""
