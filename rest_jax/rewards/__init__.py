"""Reward functions by name: `get(name)(prompts, completions, **fields)`."""

from rest_jax.rewards import arithmetic as _arithmetic  # Registers its rewards.
from rest_jax.rewards import code as _code  # Registers "humaneval", "mbpp" and "apps".
from rest_jax.rewards import math as _math  # Registers "math" and "gsm8k".
from rest_jax.rewards import numeric as _numeric  # Registers "final_number".
from rest_jax.rewards import reasoning_gym as _reasoning_gym  # Registers "reasoning_gym".
from rest_jax.rewards.registry import get
from rest_jax.rewards.registry import names
from rest_jax.rewards.registry import register
from rest_jax.rewards.registry import RewardFn

__all__ = ["RewardFn", "get", "names", "register"]
