"""NetLLM for ABR: a pre-trained LLM body adapted with LoRA, a multimodal state encoder and a networking head.

Modules: `backbone` (load the LLM body: embedded SmolLM2, a local folder, or a tiny random one for tests),
`abr_features` (observation -> fixed float vector), `abr_encoder` (vectors -> LLM-sized tokens), `model`
(the Decision-Transformer-style model and its config), `checkpoint` (safetensors-only save/load).
"""
