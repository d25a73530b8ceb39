"""Vocabularies that map text to integer token ids and back.

`Vocabulary` is the interface the data pipelines use. It fixes two reserved
ids that every vocabulary shares: padding and end of book (end of sequence).
`ByteVocabulary` maps text to its UTF-8 bytes. A subword vocabulary such as
SentencePiece fits the same interface: it encodes a string to a 1-D int32 array
and decodes such an array back to a string.
"""

import abc
from typing import Sequence, Union

import gin
import numpy as np

TokenIds = Union[Sequence[int], np.ndarray]

PAD_ID = 0
EOS_ID = 1


class Vocabulary(abc.ABC):
  """Interface of a vocabulary: text to token ids and token ids to text.

  Ids lie in [0, vocab_size). Id `pad_id` marks padding, which the data
  pipelines weight 0, and id `eos_id` marks the end of a book.
  """

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids, reserved ids included."""

  @property
  def pad_id(self) -> int:
    """Id of padding."""
    return PAD_ID

  @property
  def eos_id(self) -> int:
    """Id that ends a book."""
    return EOS_ID

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """Encode text to a 1-D int32 array of ids, without an end-of-book id."""

  @abc.abstractmethod
  def decode(self, ids: TokenIds) -> str:
    """Decode ids to text, dropping padding and end-of-book ids."""


@gin.configurable(module='vocabulary')
class ByteVocabulary(Vocabulary):
  """UTF-8 bytes shifted past the reserved ids.

  Id 0 is padding, id 1 is end of book, and byte b has id b + 2, so the
  vocabulary has 258 ids.
  """

  num_reserved_ids = 2

  @property
  def vocab_size(self) -> int:
    return 256 + self.num_reserved_ids

  def encode(self, text: str) -> np.ndarray:
    """Encode text to UTF-8 bytes shifted by the reserved ids: shape [bytes]."""
    data = np.frombuffer(text.encode('utf-8'), dtype=np.uint8)
    return data.astype(np.int32) + self.num_reserved_ids

  def decode(self, ids: TokenIds) -> str:
    """Decode ids to text.

    Padding and end-of-book ids are dropped. Byte sequences that are not valid
    UTF-8, which a model can generate, become U+FFFD replacement characters.

    Raises:
      ValueError: an id is negative or not less than `vocab_size`.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    out_of_range = (ids < 0) | (ids >= self.vocab_size)
    if out_of_range.any():
      bad_id = int(ids[out_of_range][0])
      raise ValueError(
          f'Invalid token id {bad_id}: byte vocabulary ids must lie in '
          f'[0, {self.vocab_size}). Check that the ids come from a model '
          f'with vocab_size {self.vocab_size}.')

    byte_ids = ids[ids >= self.num_reserved_ids] - self.num_reserved_ids
    return byte_ids.astype(np.uint8).tobytes().decode('utf-8', errors='replace')
