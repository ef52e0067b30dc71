"""Shared test settings: small thread counts so that two pytest workers share 2 cores."""

import torch

torch.set_num_threads(1)
