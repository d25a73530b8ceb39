"""Tests of the byte vocabulary and the vocabulary interface."""

import numpy as np
import pytest

from tasks import vocabulary


def test_byte_vocabulary_reserved_ids():
  vocab = vocabulary.ByteVocabulary()
  assert vocab.vocab_size == 258
  assert vocab.pad_id == 0
  assert vocab.eos_id == 1


def test_encode_shifts_utf8_bytes():
  vocab = vocabulary.ByteVocabulary()
  ids = vocab.encode('Aé')

  assert ids.dtype == np.int32
  assert ids.ndim == 1
  # 'A' is byte 65, 'é' is bytes 0xC3 0xA9 in UTF-8.
  assert ids.tolist() == [67, 0xC3 + 2, 0xA9 + 2]


def test_encode_empty_text():
  ids = vocabulary.ByteVocabulary().encode('')
  assert ids.shape == (0,)
  assert ids.dtype == np.int32


def test_decode_round_trip():
  vocab = vocabulary.ByteVocabulary()
  text = 'Über die Brücke — 1918.\n\tEnd'
  assert vocab.decode(vocab.encode(text)) == text


def test_encode_covers_all_byte_ids():
  vocab = vocabulary.ByteVocabulary()
  ids = vocab.encode(bytes(range(128)).decode('ascii') + '\u00ff\U0001F600')
  assert ids.min() >= 2
  assert ids.max() < vocab.vocab_size


def test_decode_drops_padding_and_eos():
  vocab = vocabulary.ByteVocabulary()
  ids = [1] + vocab.encode('ab').tolist() + [1, 0, 0]
  assert vocab.decode(ids) == 'ab'
  assert vocab.decode(np.array(ids)) == 'ab'


def test_decode_replaces_invalid_utf8():
  vocab = vocabulary.ByteVocabulary()
  ids = [ord('a') + 2, 0xFF + 2, ord('b') + 2]
  assert vocab.decode(ids) == 'a\ufffdb'


@pytest.mark.parametrize('bad_id', [-1, 258, 1000])
def test_decode_rejects_out_of_range_id(bad_id):
  vocab = vocabulary.ByteVocabulary()
  with pytest.raises(ValueError, match=f'Invalid token id {bad_id}'):
    vocab.decode([5, bad_id])


def test_vocabulary_interface_is_abstract():
  with pytest.raises(TypeError):
    vocabulary.Vocabulary()  # pylint: disable=abstract-class-instantiated


def test_subclass_inherits_reserved_ids():

  class CharacterVocabulary(vocabulary.Vocabulary):

    @property
    def vocab_size(self):
      return 0x110000 + 2

    def encode(self, text):
      return np.array([ord(char) + 2 for char in text], dtype=np.int32)

    def decode(self, ids):
      return ''.join(chr(i - 2) for i in ids if i >= 2)

  vocab = CharacterVocabulary()
  assert vocab.pad_id == 0
  assert vocab.eos_id == 1
  assert vocab.decode(vocab.encode('né')) == 'né'
