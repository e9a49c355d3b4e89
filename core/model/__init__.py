"""The model loader pipeline: load -> patch -> quantize -> attach adapter -> set precision."""
