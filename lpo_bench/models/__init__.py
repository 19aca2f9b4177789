"""Models: the ModelBundle every method trains and samples (``bundle``), registered backbones pinned by commit
and sha256 (``backbones``, ``weights``, ``load``), LoRA (``lora``), and tiny / full-size random-weight bundles for
tests and cost measurements (``tiny``, ``full_size``)."""
