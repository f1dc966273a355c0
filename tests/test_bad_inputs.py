"""Every row of the README's bad-input table, run as a user runs it (see tests/bad_inputs.py)."""

import pytest

from tests.bad_inputs import command_line, in_words, read_table, run_row, sandbox

ROWS = read_table()


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    return sandbox(str(tmp_path_factory.mktemp("bad_inputs")))


def test_the_table_covers_every_command_with_at_least_40_rows():
    commands = {row.split()[0] for row, _ in ROWS}
    assert len(ROWS) >= 40, len(ROWS)
    assert {"train", "adapt", "evaluate", "label", "summary", "review", "info", "synth", "samples", "demo", "submit"} <= commands, commands


@pytest.mark.slow
@pytest.mark.parametrize("row, answer", ROWS, ids=[row for row, _ in ROWS])
def test_a_bad_input_gets_one_line_and_exit_2_before_torch_or_ray(row, answer, places, tmp_path):
    got = run_row(command_line(row, places), str(tmp_path))
    line = in_words(" ".join(got.stderr), places)
    print(f"{got.seconds:.2f} s  cgi2real {row}")
    assert got.code == 2, (got.code, got.stderr)
    assert len(got.stderr) == 1, got.stderr
    rest = line
    for piece in answer.split("…"):  # "…" stands for what changes from run to run (a file name)
        assert piece in rest, f"README says {answer!r}, cgi2real said {line!r}"
        rest = rest[rest.index(piece) + len(piece):]
    loaded = [name for name, was in (("torch", got.torch), ("ray", got.ray)) if was]
    assert not loaded, f"{row}: imported {loaded} before answering"
