"""Real English text for the ``inputs="text"`` relaxation: a corpus and its byte vocabulary.

The corpus is the Python language reference that ships with every CPython install,
``pydoc_data.topics.topics`` (the text ``help()`` shows: several hundred KB of
English prose and code examples), its entries joined in sorted key order and
encoded as UTF-8. The vocabulary is byte-level: token = byte value, V = 256. It is
deterministic, needs no tokenizer training and has no unknown tokens; the price is
short tokens (about one character each), which only changes what a window of n
tokens spans, not how the model at init treats it.

A sample's sequence is a window of ``n + 1`` consecutive bytes at a uniformly random
offset: tokens ``t_1..t_n`` are the input, ``t_2..t_{n+1}`` the next-token targets.

References:
  Xiong et al. 2020, Section 3.4 and Fig. 3 (gradients measured on real text);
  Radford et al. 2019 ("Language Models are Unsupervised Multitask Learners", GPT-2)
    for byte-level vocabularies.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


@functools.cache
def corpus() -> np.ndarray:
  """The corpus as a read-only ``uint8`` array of byte tokens (read once, then cached)."""
  from pydoc_data import topics  # the standard library's language reference

  text = "".join(topics.topics[name] for name in sorted(topics.topics))
  return np.frombuffer(text.encode("utf-8"), np.uint8)  # values < TEXT_VOCAB = 256


class Window(NamedTuple):
  """One sequence of text: ``n`` input tokens and the token after each (int32)."""

  tokens: jax.Array
  targets: jax.Array


def window(key: jax.Array, n: int) -> Window:
  """One sequence: ``n`` input tokens at a uniformly random offset and their next tokens.

  Args:
    key: the sequence's key; the offset is ``randint(key, 0, len - n)``.
    n: sequence length.

  Returns:
    :class:`Window`: ``targets[i] = tokens[i + 1]`` within the corpus (the byte after
    the window is the last target).
  """
  tokens_C = corpus()
  if n + 1 > tokens_C.size:
    raise ValueError(f"n={n} is longer than the corpus ({tokens_C.size} bytes)")
  offset = jax.random.randint(key, (), 0, tokens_C.size - n)
  span_n1 = jax.lax.dynamic_slice(jnp.asarray(tokens_C), (offset,), (n + 1,)).astype(jnp.int32)
  return Window(span_n1[:-1], span_n1[1:])
