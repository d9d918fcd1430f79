"""Bad input to `python -m train.main` is one line on stderr and exit 2, never a traceback and
never a half-created run directory, so a user can fix it from the message alone."""
import pytest

import helpers

pytestmark = pytest.mark.e2e


# Long enough to pass the Chinchilla gate with the TINY model (needs >= 1,780 steps), so no
# bypass warning shares stderr with the error; nothing here gets as far as training.
PASSING = {"train_steps": 2000}


def _run(tmp_path, data_dir, overrides, *extra, needles, may_leave=()):
  """Run with the TINY config plus overrides; the error must leave no workdir behind (or only
  the entries in may_leave)."""
  workdir = tmp_path / "run"
  res = helpers.run_main(*helpers.tiny_flags(data_dir, {**PASSING, **overrides}), *extra,
                         workdir=workdir)
  line = helpers.assert_one_line_error(res, *needles)
  if may_leave:
    assert {p.name for p in workdir.iterdir()} <= set(may_leave), line
  else:
    assert not workdir.exists(), f"workdir created by a refused run: {line}"
  return line


def test_misspelled_config_field(prepared_data, tmp_path):
  line = _run(tmp_path, prepared_data, {}, "--config.model.n_layerz=2",
              needles=("n_layerz", 'Did you mean "n_layers"'))
  assert "\\n" not in line and "\\'" not in line  # no repr() escapes leaking into the message


def test_wrong_type_for_config_field(prepared_data, tmp_path):
  _run(tmp_path, prepared_data, {"train_steps": "abc"}, needles=("train_steps", "abc"))


def test_missing_corpus(tmp_path):
  _run(tmp_path, "", {"data.corpus": "/nonexistent.txt"},
       needles=("DataError", "/nonexistent.txt", "does not exist"))


def test_empty_corpus(tmp_path):
  corpus = tmp_path / "empty.txt"
  corpus.write_bytes(b"")
  _run(tmp_path, "", {"data.corpus": str(corpus)}, needles=("DataError", str(corpus), "empty"))


def test_binary_corpus(tmp_path):
  """Caught while preparing data (train/prepare_data.read_corpus, called from the loop), which
  runs before the run directory is created."""
  corpus = tmp_path / "blob.txt"
  corpus.write_bytes(b"some text\n" * 100 + b"\x00\x01\x02\xff" * 64)
  _run(tmp_path, "", {"data.corpus": str(corpus)},
       needles=("DataError", str(corpus), "not text", "NUL"))


def test_missing_config_flag(tmp_path):
  workdir = tmp_path / "run"
  res = helpers.run_main(workdir=workdir, config=None)
  helpers.assert_one_line_error(res, "--config")
  assert not workdir.exists()


def test_missing_workdir_flag(prepared_data):
  res = helpers.run_main(*helpers.tiny_flags(prepared_data, PASSING))
  helpers.assert_one_line_error(res, "--workdir")


def test_workdir_is_a_file(prepared_data, tmp_path):
  target = tmp_path / "a-file"
  target.write_bytes(b"not a directory\n")
  res = helpers.run_main(*helpers.tiny_flags(prepared_data, PASSING), workdir=target)
  helpers.assert_one_line_error(res, str(target), "is a file")
  assert target.read_bytes() == b"not a directory\n"


def test_d_model_not_divisible_by_n_heads(prepared_data, tmp_path):
  _run(tmp_path, prepared_data, {"model.d_model": 30, "model.n_heads": 4},
       needles=("d_model=30", "n_heads=4", "divisible"))


def test_seq_len_above_max_seq_len(prepared_data, tmp_path):
  _run(tmp_path, prepared_data, {"batch.seq_len": 256, "model.max_seq_len": 128},
       needles=("seq_len=256", "max_seq_len=128"))


def test_warmup_longer_than_training(prepared_data, tmp_path):
  _run(tmp_path, prepared_data, {"train_steps": 2000, "schedule.warmup_steps": 2001},
       needles=("warmup_steps=2001", "train_steps=2000"))


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared-dir", "prepared-in-run"])
def test_tokenizer_vocab_mismatch(prepared_data, tmp_path, prepared):
  """The char tokenizer of Tiny Shakespeare has 65 symbols; the model is told 64. The vocabulary
  is only known once the data is tokenized: into WORKDIR/data when no data_dir is given, which
  may stay (a reusable cache) but nothing of a run may (no gate.json, metrics, checkpoints)."""
  _run(tmp_path, prepared_data if prepared else "", {"model.vocab_size": 64},
       needles=("DataError", "65", "vocab_size=64", "--config.model.vocab_size=65"),
       may_leave=() if prepared else ("data",))
