"""Rule-based rewards for PPO demos and tests, selectable by name in ``PPOConfig.reward_fn``.

A rule-based reward scores a completion's text (with its prompt) without a reward model. A name
is ``"<rule>"`` or ``"<rule>:<argument>"``:

``length:N``      ``1 - |words - N| / N``: replies of about N words (default 20)
``brevity``       ``1 - chars / 200`` (floored at -1): short replies
``keyword:WORD``  share of words that contain WORD (case-insensitive), in [0, 1]
``vowels``        share of letters that are vowels, in [0, 1] (a dense signal for tiny models)
``distinct``      share of distinct words among the words (penalizes repetition)

>>> fn = resolve_reward_fn("keyword:cat")
>>> fn("Tell me about pets.", "The cat sat with another CAT")
0.3333333333333333
>>> resolve_reward_fn("length:4")("", "one two three four")
1.0
"""

from __future__ import annotations

from typing import Callable

__all__ = ["RewardFn", "RewardFunctionError", "REWARD_RULES", "resolve_reward_fn"]

RewardFn = Callable[[str, str], float]  # (prompt, completion) -> score


class RewardFunctionError(ValueError):
    """An unknown or malformed rule-based reward name; ``hint`` lists the valid ones."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f" (hint: {hint})" if hint else ""))


def _length(arg: str) -> RewardFn:
    try:
        target = int(arg) if arg else 20
    except ValueError:
        raise RewardFunctionError(f"length needs a whole number of words, got {arg!r}", "e.g. length:20") from None
    if target <= 0:
        raise RewardFunctionError(f"length needs a positive number of words, got {target}", "e.g. length:20")

    def reward(prompt: str, completion: str) -> float:
        return 1.0 - abs(len(completion.split()) - target) / target

    return reward


def _brevity(arg: str) -> RewardFn:
    if arg:
        raise RewardFunctionError("brevity takes no argument", "use reward_fn='brevity'")

    def reward(prompt: str, completion: str) -> float:
        return max(-1.0, 1.0 - len(completion.strip()) / 200.0)

    return reward


def _keyword(arg: str) -> RewardFn:
    word = arg.strip().lower()
    if not word:
        raise RewardFunctionError("keyword needs a word", "e.g. keyword:please")

    def reward(prompt: str, completion: str) -> float:
        words = completion.lower().split()
        return sum(word in w for w in words) / len(words) if words else 0.0

    return reward


def _vowels(arg: str) -> RewardFn:
    if arg:
        raise RewardFunctionError("vowels takes no argument", "use reward_fn='vowels'")

    def reward(prompt: str, completion: str) -> float:
        letters = [c for c in completion.lower() if c.isalpha()]
        return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0

    return reward


def _distinct(arg: str) -> RewardFn:
    if arg:
        raise RewardFunctionError("distinct takes no argument", "use reward_fn='distinct'")

    def reward(prompt: str, completion: str) -> float:
        words = completion.lower().split()
        return len(set(words)) / len(words) if words else 0.0

    return reward


#: rule name -> factory taking the text after ``:`` (may be empty)
REWARD_RULES: dict[str, Callable[[str], RewardFn]] = {
    "length": _length,
    "brevity": _brevity,
    "keyword": _keyword,
    "vowels": _vowels,
    "distinct": _distinct,
}


def resolve_reward_fn(name: str) -> RewardFn:
    """The reward function a name stands for (see the module docstring); raises
    :class:`RewardFunctionError` for unknown or malformed names."""
    rule, _, arg = name.strip().partition(":")
    factory = REWARD_RULES.get(rule)
    if factory is None:
        raise RewardFunctionError(f"unknown rule-based reward {name!r}",
                                  "one of: length:N, brevity, keyword:WORD, vowels, distinct")
    return factory(arg)
