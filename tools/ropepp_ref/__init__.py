"""ropepp_ref: an independent PyTorch implementation of RoPE++ Llama models (the fp64 oracle of ropepp).

    from ropepp_ref import load_checkpoint, RopePPForCausalLM, RopePPConfig, save_checkpoint, KVCache
"""
from .model import (  # noqa: F401
    MODES,
    KVCache,
    RopePPConfig,
    RopePPForCausalLM,
    infer_mode,
    inv_freq_and_mscale,
    load_checkpoint,
    read_safetensors,
    read_safetensors_header,
    rope_tables,
    rotate_half,
    save_checkpoint,
    write_safetensors,
)

__all__ = ["KVCache", "MODES", "RopePPConfig", "RopePPForCausalLM", "infer_mode", "inv_freq_and_mscale", "load_checkpoint",
           "read_safetensors", "read_safetensors_header", "rope_tables", "rotate_half", "save_checkpoint",
           "write_safetensors"]
