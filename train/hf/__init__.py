"""Hugging Face interop: pregate checkpoints out to `transformers` (export) and back in (import).

Pure numpy + safetensors + JSON: neither torch nor transformers is needed to convert; they are
only the client the tests check against. Llama (`LlamaForCausalLM`) and Qwen2
(`Qwen2ForCausalLM`) layouts; everything else is refused with one line naming the field.
"""
