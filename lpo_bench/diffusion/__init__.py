"""Diffusion math without I/O: DDIM step means, stds, log-probabilities and x0 predictions (``ddim``), seeds per
image and per purpose (``seeding``), and image generation (``generate``)."""
