"""Unit tests run tiny models, where one thread is faster than two (no sync overhead)."""

import torch

torch.set_num_threads(1)
