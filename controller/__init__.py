"""The decision service and its policies.

`controller.app` is the aiohttp service (`POST /v1/abr/decide`, `/v1/vp/predict`, `/v1/cjs/schedule`);
`controller.policies` holds the ABR policies behind one interface that the simulator uses unchanged;
`controller.netllm` is the NetLLM model (encoder -> LLM backbone with LoRA -> networking head).
"""
