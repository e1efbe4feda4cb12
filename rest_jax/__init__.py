"""rest_jax: ReST-EM (Reinforced Self-Training) in JAX/Flax."""

__version__ = "0.1.0"
