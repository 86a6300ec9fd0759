"""Solutions: exercise 05 (parameter counts)."""


def count_lora_params(config, lora_config):
    per_block = 0
    for target in lora_config.targets:
        d_out, d_in = config.matrix_shape(target)
        per_block += lora_config.r * (d_in + d_out)  # A (r, d_in) and B (d_out, r)
    n_blocks = config.n_layer if lora_config.layers is None else len(lora_config.layers)
    return n_blocks * per_block
