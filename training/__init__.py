"""Student training: LoRA / QLoRA fine-tuning with TRL and PEFT."""
