"""Vocabularies that map text to integer token ids and back.

`Vocabulary` is the interface the data pipelines use. It fixes two reserved
ids that every vocabulary shares: padding and end of book (end of sequence).
`ByteVocabulary` maps text to its UTF-8 bytes. `SentencePieceVocabulary` maps
text to SentencePiece subword pieces (Kudo and Richardson, 2018), from a
model file or from a model it trains on the train split. Both encode a string
to a 1-D int32 array and decode such an array back to a string.
"""

import abc
import io
import os
import pathlib
import time
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from absl import logging
import gin
import numpy as np

from favor_trax.training import config

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

  def prepare(self, output_dir: Union[str, pathlib.Path],
              train_texts: Callable[[], Iterable[str]]) -> None:
    """Make the vocabulary ready for a run that writes to output_dir.

    A vocabulary learned from data trains on train_texts() or loads the model
    saved in output_dir, and saves its model there. This default does
    nothing.
    """
    del output_dir, train_texts


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
    _check_ids_in_range(ids, self.vocab_size, 'byte vocabulary')

    byte_ids = ids[ids >= self.num_reserved_ids] - self.num_reserved_ids
    return byte_ids.astype(np.uint8).tobytes().decode('utf-8', errors='replace')

  def prepare(self, output_dir: Union[str, pathlib.Path],
              train_texts: Callable[[], Iterable[str]]) -> None:
    """Check that output_dir contains no run trained with SentencePiece.

    Raises:
      ConfigError: output_dir contains a SentencePiece model and a
        checkpoint, whose embeddings then do not fit the byte vocabulary.
    """
    del train_texts
    saved = pathlib.Path(output_dir) / SentencePieceVocabulary.MODEL_FILENAME
    if not saved.exists():
      return
    message = (f'{output_dir} contains a SentencePiece model ({saved.name}), '
               'but this run uses the byte vocabulary. Add --config_file '
               'gin/vocabulary/sentencepiece.gin to use that model.')
    if (pathlib.Path(output_dir) / 'model.pkl.gz').exists():
      raise config.ConfigError(
          message + ' The checkpoint there was trained with it, so it does '
          'not load with bytes.')
    logging.warning('%s', message)


def _check_ids_in_range(ids: np.ndarray, vocab_size: int, name: str) -> None:
  out_of_range = (ids < 0) | (ids >= vocab_size)
  if out_of_range.any():
    bad_id = int(ids[out_of_range][0])
    raise ValueError(
        f'Invalid token id {bad_id}: {name} ids must lie in '
        f'[0, {vocab_size}). Check that the ids come from a model with '
        f'vocab_size {vocab_size}.')


def _sentencepiece():
  """Import sentencepiece, which only this vocabulary needs."""
  import sentencepiece  # pylint: disable=import-outside-toplevel
  return sentencepiece


def _lines(texts: Iterable[str], max_characters: int) -> Iterator[str]:
  """Yield the non-blank lines of texts, up to about max_characters in all.

  The text that ends the budget is cut at the line that crosses it.
  """
  remaining = max_characters
  for text in texts:
    for line in text.split('\n'):
      if remaining <= 0:
        return
      if line.strip():
        remaining -= len(line)
        yield line


@gin.configurable(module='vocabulary')
class SentencePieceVocabulary(Vocabulary):
  """SentencePiece subword pieces shifted past the reserved ids.

  Id 0 is padding, id 1 is end of book, and SentencePiece id p has id p + 2,
  so any SentencePiece model fits, whatever control ids it defines.

  The model comes from `model_file`, or is trained on a run's train split
  with `vocab_size` ids when `prepare` is called. A model trained here
  encodes text exactly: it uses the identity normalization, keeps every
  whitespace character, has the newline as a piece of its own, and falls
  back to UTF-8 bytes for characters outside its pieces, so decode(encode(t))
  returns t.
  """

  num_reserved_ids = 2
  # File name of the model inside a run's output directory.
  MODEL_FILENAME = 'sentencepiece.model'

  def __init__(self,
               model_file: Optional[Union[str, pathlib.Path]] = None,
               vocab_size: Optional[int] = None,
               model_type: str = 'unigram',
               max_training_characters: int = 20_000_000):
    """Load a SentencePiece model, or set up one to train.

    Args:
      model_file: path of a SentencePiece model (.model) to load.
      vocab_size: number of ids of a model to train on the train split,
        the 2 reserved ids included. On a small corpus training may stop
        with fewer pieces. Give exactly one of model_file and vocab_size,
        or neither to load the model saved in a run's output directory.
      model_type: SentencePiece algorithm of a trained model: 'unigram' or
        'bpe'.
      max_training_characters: training reads the train split's books in a
        fixed random order (seed 0) and stops after this many characters.

    Raises:
      FileNotFoundError: model_file does not exist.
      ValueError: both model_file and vocab_size are given, or an argument is
        out of range.
    """
    if model_file is not None and vocab_size is not None:
      raise ValueError(
          f'Got both model_file={model_file} and vocab_size={vocab_size}. '
          'Give model_file to load a model, or vocab_size to train one.')
    if vocab_size is not None and (
        isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or
        vocab_size <= 260):
      raise ValueError(
          f'vocab_size must be an integer above 260, got {vocab_size!r}: a '
          'trained model contains the 256 byte pieces, the unknown piece, the '
          'newline piece and the 2 reserved ids.')
    if model_type not in ('unigram', 'bpe'):
      raise ValueError(
          f"model_type must be 'unigram' or 'bpe', got {model_type!r}.")
    if (isinstance(max_training_characters, bool) or
        not isinstance(max_training_characters, int) or
        max_training_characters <= 0):
      raise ValueError(
          'max_training_characters must be a positive integer, got '
          f'{max_training_characters!r}.')
    self._requested_vocab_size = vocab_size
    self._model_type = model_type
    self._max_training_characters = max_training_characters
    self._processor = None
    self._model_proto = None
    # Where the model came from, for logs and error messages.
    self.source = None
    if model_file is not None:
      self._load_file(model_file)

  @property
  def is_ready(self) -> bool:
    """Whether a model is loaded or trained."""
    return self._processor is not None

  def _check_ready(self) -> None:
    if self._processor is None:
      raise RuntimeError(
          'The SentencePiece vocabulary has no model yet. Give model_file, '
          'or call prepare(output_dir, train_texts) to train one with '
          'vocab_size or to load the model saved in output_dir.')

  def _set_model(self, model_proto: bytes, source: str) -> None:
    processor = _sentencepiece().SentencePieceProcessor(
        model_proto=model_proto)
    self._processor = processor
    self._model_proto = model_proto
    self.source = source

  def _load_file(self, path: Union[str, pathlib.Path]) -> None:
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(
          f'SentencePiece model file not found: {path}. Bind '
          'SentencePieceVocabulary.model_file to an existing .model file, or '
          'bind vocab_size instead to train a model on the train split.')
    try:
      self._set_model(path.read_bytes(), str(path))
    except RuntimeError as error:
      raise ValueError(
          f'{path} is not a valid SentencePiece model: {error}') from error

  @property
  def vocab_size(self) -> int:
    self._check_ready()
    return self._processor.get_piece_size() + self.num_reserved_ids

  @property
  def model_proto(self) -> bytes:
    """The serialized SentencePiece model."""
    self._check_ready()
    return self._model_proto

  def encode(self, text: str) -> np.ndarray:
    """Encode text to piece ids shifted by the reserved ids: shape [pieces]."""
    self._check_ready()
    ids = np.asarray(self._processor.encode(text), dtype=np.int32)
    return ids.reshape(-1) + self.num_reserved_ids

  def decode(self, ids: TokenIds) -> str:
    """Decode ids to text, dropping padding and end-of-book ids.

    Raises:
      ValueError: an id is negative or not less than `vocab_size`.
    """
    self._check_ready()
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    _check_ids_in_range(ids, self.vocab_size, 'SentencePiece vocabulary')
    piece_ids = ids[ids >= self.num_reserved_ids] - self.num_reserved_ids
    return self._processor.decode(piece_ids.tolist())

  def train(self, texts: Iterable[str]) -> None:
    """Train a model with `vocab_size` ids on the lines of texts.

    Raises:
      ValueError: vocab_size was not given, or the texts contain no line.
    """
    if self._requested_vocab_size is None:
      raise ValueError(
          'SentencePieceVocabulary needs vocab_size to train a model. Bind '
          'SentencePieceVocabulary.vocab_size (for example 32000), or bind '
          'model_file to load a trained model.')
    model = io.BytesIO()
    lines = _lines(texts, self._max_training_characters)
    first_line = next(lines, None)
    if first_line is None:
      raise ValueError(
          'Cannot train a SentencePiece model: the training texts contain no '
          'non-blank line.')

    def all_lines():
      yield first_line
      yield from lines

    start = time.time()
    try:
      _sentencepiece().SentencePieceTrainer.train(
          sentence_iterator=all_lines(),
          model_writer=model,
          vocab_size=self._requested_vocab_size - self.num_reserved_ids,
          model_type=self._model_type,
          # Padding and end of book are this class's reserved ids, outside
          # the SentencePiece model, which defines only the unknown piece.
          unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
          user_defined_symbols=['\n'],
          byte_fallback=True,
          # The rarest characters, 0.05% of all character occurrences, get
          # no piece of their own and are encoded as UTF-8 bytes.
          character_coverage=0.9995,
          normalization_rule_name='identity',
          remove_extra_whitespaces=False,
          # A small corpus may not support vocab_size pieces, so training
          # may end with fewer.
          hard_vocab_limit=False,
          num_threads=os.cpu_count() or 1,
          minloglevel=2)
    except RuntimeError as error:
      raise ValueError(
          f'Training a SentencePiece model of vocab_size = '
          f'{self._requested_vocab_size} failed ({error}). Raise vocab_size '
          'above the number of distinct characters of the training text plus '
          '260.') from error
    self._set_model(model.getvalue(), 'trained on the train split')
    logging.info('Trained a SentencePiece %s model of %d ids in %.1f s.',
                 self._model_type, self.vocab_size, time.time() - start)
    if self.vocab_size < self._requested_vocab_size:
      logging.warning(
          'The SentencePiece model has %d ids, fewer than vocab_size = %d, '
          'because the training text supports no more pieces.',
          self.vocab_size, self._requested_vocab_size)

  def save(self, directory: Union[str, pathlib.Path]) -> pathlib.Path:
    """Write the model to directory/MODEL_FILENAME atomically; return its path."""
    path = pathlib.Path(directory) / self.MODEL_FILENAME
    temporary = path.with_name(path.name + '.tmp')
    temporary.write_bytes(self.model_proto)
    os.replace(temporary, path)
    return path

  def prepare(self, output_dir: Union[str, pathlib.Path],
              train_texts: Callable[[], Iterable[str]]) -> None:
    """Load, or train, the model of a run, and save it in output_dir.

    A model saved in output_dir by an earlier call wins, so resumed training,
    evaluation and sampling use the vocabulary the run started with.
    Otherwise the model of model_file is used, or a model is trained on
    train_texts(). The model is then saved as output_dir/MODEL_FILENAME.

    Raises:
      ValueError: the saved model differs from model_file or has another
        vocab_size than the one requested.
    """
    saved = pathlib.Path(output_dir) / self.MODEL_FILENAME
    if saved.is_file():
      saved_proto = saved.read_bytes()
      if self.is_ready and self._model_proto != saved_proto:
        raise ValueError(
            f'The run in {output_dir} uses the SentencePiece model {saved}, '
            f'which differs from model_file {self.source}. Remove the '
            'model_file binding to keep the run\'s vocabulary, or use a new '
            'output_dir.')
      self._set_model(saved_proto, str(saved))
      requested = self._requested_vocab_size
      if requested is not None and self.vocab_size > requested:
        raise ValueError(
            f'The run in {output_dir} uses the SentencePiece model {saved} of '
            f'{self.vocab_size} ids, more than vocab_size = {requested}. '
            'Remove the vocab_size binding to keep the run\'s vocabulary, or '
            'use a new output_dir.')
      logging.info('Using the SentencePiece model of this run, %s (%d ids).',
                   saved, self.vocab_size)
      return

    if not self.is_ready:
      self.train(train_texts())
    self.save(output_dir)
    logging.info('Saved the SentencePiece model (%d ids, %s) to %s.',
                 self.vocab_size, self.source, saved)
