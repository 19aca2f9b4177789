"""Image-text metric adapters, one per file; heavy imports happen inside ``load()``."""
