"""blockadmm.argtypes: values checked at parse time, one list syntax, one error line per failure."""
import argparse

import pytest

from blockadmm import argtypes


@pytest.mark.parametrize("fn, text, value", [
    (argtypes.positive_int, "3", 3), (argtypes.nonneg_int, "0", 0), (argtypes.positive_float, "1e-3", 1e-3),
    (argtypes.nonneg_float, "0", 0.0), (argtypes.int_list, "256, 128", [256, 128]),
    (argtypes.seed_list, "0,1,2", [0, 1, 2]),
    (argtypes.float_list, "0.5,1", [0.5, 1.0]), (argtypes.str_list, "online,batch", ["online", "batch"]),
    (argtypes.device, "cpu", "cpu"),
])
def test_good_values(fn, text, value):
    assert fn(text) == value


@pytest.mark.parametrize("fn, text, match", [
    (argtypes.positive_int, "0", "integer >= 1"), (argtypes.positive_int, "-3", "integer >= 1"),
    (argtypes.positive_int, "2.5", "integer >= 1"), (argtypes.nonneg_int, "-1", "integer >= 0"),
    (argtypes.positive_float, "-1", "number > 0"), (argtypes.positive_float, "nan", "number > 0"),
    (argtypes.positive_float, "inf", "number > 0"), (argtypes.nonneg_float, "x", "number >= 0"),
    (argtypes.int_list, "1,,2", "comma-separated"), (argtypes.int_list, "", "comma-separated"),
    (argtypes.int_list, "1,0", "integer >= 1"), (argtypes.device, "gpu7", "unknown device"),
])
def test_bad_values_are_argparse_errors(fn, text, match):
    with pytest.raises(argparse.ArgumentTypeError, match=match):
        fn(text)


def test_cuda_without_a_gpu_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(argparse.ArgumentTypeError, match="no CUDA device"):
        argtypes.device("cuda")


def test_output_dir(tmp_path):
    assert argtypes.output_dir(str(tmp_path / "new" / "run")) == str(tmp_path / "new" / "run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(argparse.ArgumentTypeError, match="is a file"):
        argtypes.output_dir(str(tmp_path / "file"))
    with pytest.raises(argparse.ArgumentTypeError, match="not a writable folder"):
        argtypes.output_dir(str(tmp_path / "file" / "below"))


def test_run_command_turns_errors_into_one_line(capsys, monkeypatch):
    monkeypatch.delenv("BLOCKADMM_TRACEBACK", raising=False)

    def boom():
        raise ValueError("rho must be > 0,\n  got -1")

    assert argtypes.run_command("blockadmm", boom) == 1
    err = capsys.readouterr().err
    assert err == "blockadmm: error: rho must be > 0, got -1\n"

    def interrupted():
        raise KeyboardInterrupt

    assert argtypes.run_command("blockadmm", interrupted) == 130
    assert "interrupted" in capsys.readouterr().err
    assert argtypes.run_command("blockadmm", lambda: 0) == 0
