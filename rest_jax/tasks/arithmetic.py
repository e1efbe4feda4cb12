"""Procedurally generated multi-step integer arithmetic with worked solutions.

A problem adds and subtracts n operands left to right, e.g.

  prompt:   "Compute 37+15-8+21.\n"
  solution: "37+15=52\n52-8=44\n44+21=65\nAnswer: 65"

Operands lie in [1, max_operand] and every running total in [0, max_total].
Given its number of operands, a problem is drawn uniformly from all problems
that satisfy these bounds; the number of operands is drawn uniformly from its
range.

Splits: "human" (with worked solutions, the SFT data), "train" (answers only,
what ReST-EM self-trains on), "val" (early stopping), "test", and "transfer"
(more operands than seen in training). No prompt appears twice in the task.
Each split draws from its own random stream, seeded by (seed, split) and fixed
in chunks, and skips prompts already taken by the splits generated before it in
`_GENERATION_ORDER`. A split therefore depends only on the seed, the bounds,
its own size (growing it only appends problems) and the sizes of the splits
before it: the test set does not change with num_train.

Shape letters: C = problems drawn in one chunk, D = candidate moves per step
(2 * max_operand), N = operands per problem, K = operands still to come,
T = running totals (max_total + 1).
"""

from collections.abc import Sequence
import operator

import numpy as np

from rest_jax.rewards import arithmetic as arithmetic_rewards
from rest_jax.tasks import base
from rest_jax.tasks import registry

REWARDS = ("arithmetic", "arithmetic_answer", "arithmetic_steps")

# Seed index of each split's random stream: fixed, so that adding a split or
# reordering generation never changes an existing split's stream.
_SPLIT_SEED_INDEX = {"human": 0, "train": 1, "val": 2, "test": 3, "transfer": 4}
# Evaluation splits first, so that they never depend on training set sizes.
_GENERATION_ORDER = ("test", "val", "transfer", "human", "train")
# Splits listed in the task, in reading order.
_SPLIT_ORDER = ("human", "train", "val", "test", "transfer")
# Draws per distinct problem requested before a split gives up; only a request
# close to the size of the whole problem space comes near it.
_DRAWS_PER_PROBLEM = 50
# Problems drawn per chunk; fewer when 2*max_operand candidate moves per problem
# would make a chunk's arrays larger than _CHUNK_ELEMENTS.
_CHUNK_SIZE = 1024
_CHUNK_ELEMENTS = 1 << 18


@registry.register("arithmetic")
def get_task(
    *,
    seed: int = 0,
    num_human: int = 1000,
    num_train: int = 8000,
    num_val: int = 500,
    num_test: int = 1000,
    num_transfer: int = 500,
    min_operands: int = 2,
    max_operands: int = 4,
    max_operand: int = 99,
    transfer_min_operands: int = 5,
    transfer_max_operands: int = 6,
    max_total: int = 999,
    reward: str = "arithmetic",
) -> base.Task:
  """Builds the arithmetic task.

  Args:
    seed: Seed of every split's random stream.
    num_human: Problems with human-written worked solutions.
    num_train: Problems (answers only) for self-training.
    num_val: Problems for early stopping.
    num_test: Problems for evaluation.
    num_transfer: Longer evaluation problems, with transfer_min_operands to
      transfer_max_operands operands.
    min_operands: Fewest operands in the non-transfer splits.
    max_operands: Most operands in the non-transfer splits.
    max_operand: Largest operand; the smallest is 1.
    transfer_min_operands: Fewest operands in the transfer split.
    transfer_max_operands: Most operands in the transfer split.
    max_total: Largest running total; the smallest is 0.
    reward: Reward name: "arithmetic" (binary) or "arithmetic_steps" (partial
      credit for correct steps).

  Returns:
    The task, with splits "human", "train", "val", "test" and "transfer".
  """
  sizes = {
      "human": num_human,
      "train": num_train,
      "val": num_val,
      "test": num_test,
      "transfer": num_transfer,
  }
  _check_integers(
      seed=seed,
      **{f"num_{split}": size for split, size in sizes.items()},
      min_operands=min_operands,
      max_operands=max_operands,
      max_operand=max_operand,
      transfer_min_operands=transfer_min_operands,
      transfer_max_operands=transfer_max_operands,
      max_total=max_total,
  )
  _validate(
      seed=seed,
      sizes=sizes,
      operand_ranges={
          "": (min_operands, max_operands),
          "transfer_": (transfer_min_operands, transfer_max_operands),
      },
      max_operand=max_operand,
      max_total=max_total,
      reward=reward,
  )
  ranges = {split: (min_operands, max_operands) for split in sizes}
  ranges["transfer"] = (transfer_min_operands, transfer_max_operands)
  ways_KxT = _completion_counts(
      max(max_operands, transfer_max_operands), max_operand, max_total
  )
  _check_problem_space(sizes, ranges, ways_KxT)

  taken_prompts: set[str] = set()
  splits = {}
  for split in _GENERATION_ORDER:
    splits[split] = _generate_split(
        split,
        sizes[split],
        ranges[split],
        seed=seed,
        max_operand=max_operand,
        max_total=max_total,
        ways_KxT=ways_KxT,
        taken_prompts=taken_prompts,
    )
  return base.Task(
      name="arithmetic",
      reward=reward,
      splits={split: splits[split] for split in _SPLIT_ORDER},
      extract_answer=arithmetic_rewards.extract_final_answer,
  )


def worked_solution(prompt: str) -> str:
  """Returns the worked solution of a prompt, as in the "human" split."""
  return _format_solution(*arithmetic_rewards.parse_prompt(prompt))


def _format_prompt(operands: Sequence[int], operators: Sequence[str]) -> str:
  terms = [str(operands[0])]
  terms += [f"{op}{operand}" for op, operand in zip(operators, operands[1:])]
  return f"Compute {''.join(terms)}.\n"


def _format_solution(operands: Sequence[int], operators: Sequence[str]) -> str:
  lines = arithmetic_rewards.solution_steps(operands, operators)
  return "\n".join(lines) + f"\nAnswer: {_evaluate(operands, operators)}"


def _evaluate(operands: Sequence[int], operators: Sequence[str]) -> int:
  total = operands[0]
  for op, operand in zip(operators, operands[1:]):
    total = total + operand if op == "+" else total - operand
  return total


def _check_integers(**values: object) -> None:
  for name, value in values.items():
    try:
      operator.index(value)
    except TypeError:
      raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _validate(
    *,
    seed: int,
    sizes: dict[str, int],
    operand_ranges: dict[str, tuple[int, int]],
    max_operand: int,
    max_total: int,
    reward: str,
) -> None:
  """Raises a ValueError naming the first bad argument."""
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}")
  for split, size in sizes.items():
    if size < 0:
      raise ValueError(f"num_{split} must be >= 0, got {size}")
  for prefix, (low, high) in operand_ranges.items():
    if low < 2:
      raise ValueError(f"{prefix}min_operands must be >= 2, got {low}")
    if low > high:
      raise ValueError(
          f"{prefix}min_operands ({low}) must be <= {prefix}max_operands"
          f" ({high})"
      )
  if max_operand < 1:
    raise ValueError(f"max_operand must be >= 1, got {max_operand}")
  if max_total < 1:
    raise ValueError(f"max_total must be >= 1, got {max_total}")
  if reward not in REWARDS:
    raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")


def _completion_counts(
    max_operands: int, max_operand: int, max_total: int
) -> np.ndarray:
  """Counts the ways to go on from each running total.

  Returns:
    ways_KxT: [k, t] = number of ways to append k more signed operands to a
    running total t with every running total staying in [0, max_total]; K =
    max_operands + 1, T = max_total + 1. Floats: only ratios and comparisons
    with requested sizes use them, and the counts outgrow int64.
    ways_KxT[n, 0] is the number of distinct n-operand problems, since the
    first operand is a "+" move from 0.
  """
  totals_T = np.arange(max_total + 1)
  ways_KxT = np.zeros((max_operands + 1, max_total + 1))
  ways_KxT[0] = 1.0
  for k in range(1, max_operands + 1):
    prefix_sums = np.concatenate([[0.0], np.cumsum(ways_KxT[k - 1])])
    up_T = (
        prefix_sums[np.minimum(totals_T + max_operand, max_total) + 1]
        - prefix_sums[totals_T + 1]
    )
    down_T = prefix_sums[totals_T] - prefix_sums[
        np.maximum(totals_T - max_operand, 0)
    ]
    ways_KxT[k] = up_T + down_T
  return ways_KxT


def _check_problem_space(
    sizes: dict[str, int],
    ranges: dict[str, tuple[int, int]],
    ways_KxT: np.ndarray,
) -> None:
  """Raises a ValueError if the splits ask for more problems than exist."""
  main = set(range(ranges["test"][0], ranges["test"][1] + 1))
  transfer = set(range(ranges["transfer"][0], ranges["transfer"][1] + 1))
  num_transfer = sizes["transfer"]
  num_main = sum(sizes.values()) - num_transfer
  for what, requested, operand_counts in (
      ("human+train+val+test", num_main, main),
      ("transfer", num_transfer, transfer),
      ("all splits", num_main + num_transfer, main | transfer),
  ):
    available = float(sum(ways_KxT[n, 0] for n in operand_counts))
    if requested > available:
      counts = sorted(operand_counts)
      raise ValueError(
          f"{what}: {requested} problems requested, but only {available:.0f}"
          f" distinct problems with {counts[0]}..{counts[-1]} operands exist"
          " within max_operand and max_total"
      )


def _generate_split(
    split: str,
    size: int,
    operand_range: tuple[int, int],
    *,
    seed: int,
    max_operand: int,
    max_total: int,
    ways_KxT: np.ndarray,
    taken_prompts: set[str],
) -> tuple[base.Problem, ...]:
  """Draws `size` problems with prompts not in `taken_prompts`, adding them."""
  rng = np.random.default_rng([seed, _SPLIT_SEED_INDEX[split]])
  chunk_size = max(1, min(_CHUNK_SIZE, _CHUNK_ELEMENTS // (2 * max_operand)))
  max_draws = _DRAWS_PER_PROBLEM * size
  problems = []
  draws = 0
  while len(problems) < size:
    if draws >= max_draws:
      raise ValueError(
          f"drew only {len(problems)} distinct {split} problems of {size} in"
          f" {draws} draws: too close to the {operand_range[0]}-"
          f"{operand_range[1]} operand problem space; lower num_{split} or"
          " raise max_operand, max_total or the operand counts"
      )
    for operands, operators in _draw_chunk(
        rng, chunk_size, operand_range, max_operand, max_total, ways_KxT
    ):
      draws += 1
      prompt = _format_prompt(operands, operators)
      if prompt in taken_prompts:
        continue
      taken_prompts.add(prompt)
      index = len(problems)
      problems.append(
          base.Problem(
              id=f"{split}/{index:06d}",
              prompt=prompt,
              fields={"answer": str(_evaluate(operands, operators))},
              solution=(
                  _format_solution(operands, operators)
                  if split == "human"
                  else None
              ),
          )
      )
      if len(problems) == size:
        break
  return tuple(problems)


def _draw_chunk(
    rng: np.random.Generator,
    chunk_size: int,
    operand_range: tuple[int, int],
    max_operand: int,
    max_total: int,
    ways_KxT: np.ndarray,
) -> list[tuple[list[int], list[str]]]:
  """Draws `chunk_size` problems, each uniform given its operand count.

  Each move (a signed operand) is drawn with probability proportional to the
  number of ways to finish the problem from the running total it leads to,
  which makes every valid problem with n operands equally likely.
  """
  min_operands, max_operands = operand_range
  num_operands_C = rng.integers(min_operands, max_operands + 1, size=chunk_size)
  magnitudes = np.arange(1, max_operand + 1)
  moves_D = np.concatenate([magnitudes, -magnitudes])
  totals_C = np.zeros(chunk_size, dtype=np.int64)
  moves_CxN = np.zeros((chunk_size, max_operands), dtype=np.int64)
  for step in range(max_operands):
    remaining_C = np.maximum(num_operands_C - step - 1, 0)
    new_totals_CxD = totals_C[:, None] + moves_D[None, :]
    valid_CxD = (new_totals_CxD >= 0) & (new_totals_CxD <= max_total)
    if step == 0:
      valid_CxD &= moves_D[None, :] > 0  # The first operand has no sign.
    weights_CxD = np.where(
        valid_CxD,
        ways_KxT[remaining_C[:, None], np.clip(new_totals_CxD, 0, max_total)],
        0.0,
    )
    cumulative_CxD = np.cumsum(weights_CxD, axis=1)
    thresholds_C = rng.random(chunk_size) * cumulative_CxD[:, -1]
    # The first move whose cumulative weight exceeds the threshold; the clamp
    # to the last valid move only matters if rounding lifts the threshold to
    # the total weight.
    last_valid_C = len(moves_D) - 1 - np.argmax(valid_CxD[:, ::-1], axis=1)
    chosen_C = np.minimum(
        (cumulative_CxD <= thresholds_C[:, None]).sum(axis=1), last_valid_C
    )
    moves_C = np.where(step < num_operands_C, moves_D[chosen_C], 0)
    moves_CxN[:, step] = moves_C
    totals_C = totals_C + moves_C
  chunk = []
  for moves, n in zip(moves_CxN.tolist(), num_operands_C.tolist()):
    operands = [abs(move) for move in moves[:n]]
    operators = ["+" if move > 0 else "-" for move in moves[1:n]]
    chunk.append((operands, operators))
  return chunk
