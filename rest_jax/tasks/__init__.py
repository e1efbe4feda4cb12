"""Tasks by name: `get(name, **kwargs) -> Task` (problem splits, a reward)."""

from rest_jax.tasks import arithmetic as _arithmetic  # Registers "arithmetic".
from rest_jax.tasks import word_problems as _word_problems  # Registers "word_problems".
from rest_jax.tasks import code_tasks as _code_tasks  # Registers "humaneval", "mbpp", "apps".
from rest_jax.tasks import gsm8k as _gsm8k  # Registers "gsm8k".
from rest_jax.tasks import hendrycks_math as _hendrycks_math  # Registers "math", "math500".
from rest_jax.tasks import reasoning_gym as _reasoning_gym  # Registers "reasoning_gym".
from rest_jax.tasks import list_programs as _list_programs  # Registers "list_programs".
from rest_jax.tasks.base import Problem
from rest_jax.tasks.base import reward_fields
from rest_jax.tasks.base import Task
from rest_jax.tasks.registry import from_config
from rest_jax.tasks.registry import get
from rest_jax.tasks.registry import names
from rest_jax.tasks.registry import register

__all__ = ["Problem", "Task", "from_config", "get", "names", "register", "reward_fields"]
