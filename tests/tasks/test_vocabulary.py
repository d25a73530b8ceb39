"""Tests of the byte vocabulary and the vocabulary interface."""

import numpy as np
import pytest

from favor_trax.training import config
from tasks import demo_corpus
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


def _training_texts():
  """Return about 40,000 characters that train a small model in a second."""
  topics = demo_corpus.load_topics()
  return [topics[name] for name in sorted(topics)[:12]]


@pytest.fixture(name='trained_dir', scope='module')
def fixture_trained_dir(tmp_path_factory):
  """An output directory in which an 800-id SentencePiece model was saved."""
  output_dir = tmp_path_factory.mktemp('run')
  vocab = vocabulary.SentencePieceVocabulary(vocab_size=800)
  vocab.prepare(output_dir, _training_texts)
  return output_dir


def _saved_vocabulary(trained_dir):
  return vocabulary.SentencePieceVocabulary(
      model_file=trained_dir / vocabulary.SentencePieceVocabulary.MODEL_FILENAME)


def test_sentencepiece_round_trip(trained_dir):
  vocab = _saved_vocabulary(trained_dir)
  text = ('  Two  spaces,\ttabs,\n\nblank lines, Über, 1918 and \U0001F600 '
          'end.  \n')

  ids = vocab.encode(text)

  assert ids.dtype == np.int32
  assert ids.min() >= 2
  assert ids.max() < vocab.vocab_size
  assert vocab.decode(ids) == text
  assert vocab.decode([1] + ids.tolist() + [1, 0, 0]) == text


def test_sentencepiece_reserved_ids_and_size(trained_dir):
  vocab = _saved_vocabulary(trained_dir)
  assert vocab.vocab_size == 800
  assert vocab.pad_id == 0
  assert vocab.eos_id == 1
  # Pieces join characters: far fewer ids than bytes on the training text.
  text = _training_texts()[0]
  assert len(vocab.encode(text)) < 0.6 * len(text.encode('utf-8'))


def test_sentencepiece_prepare_reuses_saved_model(trained_dir):
  def fail_to_read():
    raise AssertionError('prepare read training texts despite a saved model')

  saved = (trained_dir /
           vocabulary.SentencePieceVocabulary.MODEL_FILENAME).read_bytes()
  for vocab in (vocabulary.SentencePieceVocabulary(),
                vocabulary.SentencePieceVocabulary(vocab_size=800),
                _saved_vocabulary(trained_dir)):
    vocab.prepare(trained_dir, fail_to_read)
    assert vocab.model_proto == saved


def test_sentencepiece_prepare_copies_model_file(trained_dir, tmp_path):
  vocab = _saved_vocabulary(trained_dir)
  vocab.prepare(tmp_path, lambda: [])

  copied = tmp_path / vocabulary.SentencePieceVocabulary.MODEL_FILENAME
  assert copied.read_bytes() == vocab.model_proto


def test_sentencepiece_prepare_rejects_other_model_file(trained_dir,
                                                        tmp_path):
  other = vocabulary.SentencePieceVocabulary(vocab_size=600)
  other.prepare(tmp_path, _training_texts)
  vocab = _saved_vocabulary(trained_dir)
  with pytest.raises(ValueError, match='differs from model_file'):
    vocab.prepare(tmp_path, _training_texts)


def test_sentencepiece_prepare_rejects_smaller_vocab_size(trained_dir):
  vocab = vocabulary.SentencePieceVocabulary(vocab_size=600)
  with pytest.raises(ValueError, match='800 ids, more than vocab_size = 600'):
    vocab.prepare(trained_dir, _training_texts)


def test_sentencepiece_without_model_raises(tmp_path):
  vocab = vocabulary.SentencePieceVocabulary(vocab_size=300)
  with pytest.raises(RuntimeError, match='no model yet'):
    vocab.encode('text')
  with pytest.raises(ValueError, match='needs vocab_size'):
    vocabulary.SentencePieceVocabulary().prepare(tmp_path, _training_texts)


@pytest.mark.parametrize('arguments, error, message', [
    (dict(model_file='missing.model'), FileNotFoundError, 'not found'),
    (dict(model_file='x.model', vocab_size=300), ValueError, 'Got both'),
    (dict(vocab_size=100), ValueError, 'vocab_size must be'),
    (dict(vocab_size=300, model_type='word'), ValueError, 'model_type'),
])
def test_sentencepiece_rejects_bad_arguments(arguments, error, message):
  with pytest.raises(error, match=message):
    vocabulary.SentencePieceVocabulary(**arguments)


def test_sentencepiece_rejects_out_of_range_id(trained_dir):
  vocab = _saved_vocabulary(trained_dir)
  with pytest.raises(ValueError, match='Invalid token id 800'):
    vocab.decode([5, 800])


def test_sentencepiece_too_small_vocab_size_raises(tmp_path):
  # The text has 92 distinct characters, more than 300 - 260.
  vocab = vocabulary.SentencePieceVocabulary(vocab_size=300)
  with pytest.raises(ValueError, match='Raise vocab_size'):
    vocab.prepare(tmp_path, _training_texts)


def test_byte_vocabulary_rejects_sentencepiece_run(tmp_path):
  byte_vocabulary = vocabulary.ByteVocabulary()
  (tmp_path / 'sentencepiece.model').write_bytes(b'model')
  byte_vocabulary.prepare(tmp_path, lambda: [])

  (tmp_path / 'model.pkl.gz').write_bytes(b'checkpoint')
  with pytest.raises(config.ConfigError,
                     match='gin/vocabulary/sentencepiece.gin'):
    byte_vocabulary.prepare(tmp_path, lambda: [])
