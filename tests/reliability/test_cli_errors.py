"""Defect 6: one top-level CLI error handler. OS errors (disk full, path is a file...), hub/offline errors and
corrupt files each print ONE line naming the path and the remedy; ``--debug`` shows the traceback."""
import errno
import json
import shutil

import pytest

from jmlr.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from jmlr.retriever.testing import random_texts, tiny_encoder_dir

    root = tmp_path_factory.mktemp("clierr")
    with open(root / "corpus.jsonl", "w") as f:
        for i, t in enumerate(random_texts(20, seed=1)):
            f.write(json.dumps({"id": f"p{i}", "text": t}) + "\n")
    return root / "corpus.jsonl", tiny_encoder_dir(root / "enc")


def _one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_an_output_path_under_a_file_is_one_line_naming_it(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("not a folder")
    assert main(["train", f"output_dir={f / 'run'}", "--no-progress"]) == 1
    err = _one_line(capsys)
    assert str(f) in err and "is a file, not a folder" in err


def test_debug_shows_the_traceback(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        main(["--debug", "train", f"output_dir={f / 'run'}"])
    with pytest.raises(NotADirectoryError):
        main(["train", f"output_dir={f / 'run'}", "--debug"])


def test_a_missing_local_model_path_is_named_as_such(corpus, tmp_path, capsys):
    c, _ = corpus
    missing = tmp_path / "no" / "such" / "encoder"
    assert main(["index", "build", "--corpus", str(c), "--encoder", str(missing), "--out", str(tmp_path / "i")]) == 2
    err = _one_line(capsys)
    assert f"model folder {missing} does not exist" in err and "Repo id" not in err


def test_corrupt_weights_are_named(corpus, tmp_path, capsys):
    c, enc = corpus
    bad = tmp_path / "enc"
    shutil.copytree(enc, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["index", "build", "--corpus", str(c), "--encoder", str(bad), "--out", str(tmp_path / "i")]) == 2
    err = _one_line(capsys)
    assert str(weights) in err and "truncated or corrupt" in err


def test_an_offline_hub_name_is_one_line(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    c, _ = corpus
    rc = main(["index", "build", "--corpus", str(c), "--encoder", "no-such-org/no-such-model", "--out",
               str(tmp_path / "i")])
    assert rc != 0
    err = _one_line(capsys)
    assert "no-such-org/no-such-model" in err


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "no space left on device while writing /data/run/x.pt"),
                                        (errno.EROFS, "read-only file system"),
                                        (errno.EACCES, "permission denied"),
                                        (errno.ENOTDIR, "is a file")])
def test_os_errors_are_said_as_such(code, words):
    from jmlr.cli import describe_error

    msg, rc = describe_error(OSError(code, "os text", "/data/run/x.pt"))
    assert words in msg and "/data/run/x.pt" in msg and rc == 1
