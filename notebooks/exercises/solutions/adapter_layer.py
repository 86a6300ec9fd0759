"""Solutions: exercise 07 (the adapter layer of Houlsby et al., a baseline)."""

import numpy as np


def adapter_layer(h, W_down, b_down, W_up, b_up):
    z = np.maximum(h @ W_down.T + b_down, 0.0)  # (..., m): down-projection, then f = ReLU
    return h + z @ W_up.T + b_up  # up-projection, and the residual connection
