"""NetLLM Testbed: shared core of the ABR testbed and the NetLLM framework.

This package holds only what every part uses: the command line (`cli`), typed run configs (`config`),
the ABR observation that travels from player (or simulator) to controller (`abr_state`), the QoE
definition (`qoe`), the video description (`video`) and the per-chunk log format (`chunklog`).
The parts themselves live in the top-level packages `server`, `client`, `controller`, `traces`,
`emulation` and `training`.
"""

__version__ = "0.1.0"
