"""The README's synopses and each command's --help say the same: the same options, the same defaults."""

import re
from pathlib import Path

import pytest
import typer

from cgi2real.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COMMANDS = [c.name for c in typer.main.get_command(app).commands.values() if not c.hidden]
OPTION = re.compile(r"(--[a-z0-9][a-z0-9-]*)(?:/(--[a-z0-9-]+))?(?:[ =]([^\s\[\]|]+(?:\|[^\s\[\]|]+)*))?")


def synopsis(command: str) -> str:
    """The first ```bash block under the command's heading: its `cgi2real COMMAND` line and continuations."""
    heading = re.search(rf"^### `cgi2real {command}\b.*$", README, re.M)
    assert heading, f"README has no '### `cgi2real {command} ...`' heading"
    section = README[heading.end():]
    section = section[:m.start()] if (m := re.search(r"^#{1,3} ", section, re.M)) else section
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"README's {command} section has no ```bash synopsis"
    lines, taking = [], False
    for line in block.group(1).splitlines():
        taking = line.startswith(f"cgi2real {command}") or (taking and lines[-1].endswith("\\"))
        if taking:
            lines.append(line.strip())
    assert lines, f"the {command} synopsis has no `cgi2real {command}` line"
    return " ".join(lines)


def readme_options(text: str) -> dict[str, str | None]:
    """--option -> the value the synopsis shows after it (None for a flag or a placeholder word)."""
    found = {}
    for m in OPTION.finditer(text):
        for name in filter(None, (m.group(1), m.group(2))):
            found[name] = m.group(3)
    return found


def help_options(command: str) -> dict[str, object]:
    """--option -> its default, for every option --help shows (both names of a --x/--no-x flag)."""
    cmd = typer.main.get_command(app).commands[command]
    found = {}
    for p in cmd.params:
        if p.param_type_name == "option" and not p.hidden:
            for name in (*p.opts, *p.secondary_opts):
                if name.startswith("--") and name != "--help":
                    found[name] = p.default
    return found


def test_every_command_has_a_synopsis():
    assert set(COMMANDS) >= {"train", "adapt", "evaluate", "label", "summary", "review", "info", "synth", "samples", "submit", "demo"}
    for command in COMMANDS:
        synopsis(command)


@pytest.mark.parametrize("command", COMMANDS)
def test_the_readme_synopsis_names_every_option_and_its_default(command):
    shown, real = readme_options(synopsis(command)), help_options(command)
    cmd = typer.main.get_command(app).commands[command]
    missing = [p.opts[0] for p in cmd.params if p.param_type_name == "option" and not p.hidden and p.opts[0] != "--help"
               and not {*p.opts, *p.secondary_opts} & set(shown)]
    assert not missing, f"README's {command} synopsis leaves out {missing}"
    unknown = sorted(set(shown) - set(real))
    assert not unknown, f"README's {command} synopsis shows {unknown}, which {command} does not take"
    for name, value in shown.items():
        default = real[name]
        if value is None or isinstance(default, bool) or default is None:
            continue
        try:
            number = float(value)
        except ValueError:
            continue  # a placeholder (N, URL) or choices (crop|pad|squash)
        assert isinstance(default, (int, float)) and number == float(default), f"{command} {name}: README shows {value}, --help's default is {default}"


def test_the_checker_sees_a_missing_option_and_a_wrong_default():
    """It reads the synopses it means to: a changed default and a dropped option do not pass."""
    text = synopsis("review")
    assert readme_options(text)["--per-class"] == "24" and help_options("review")["--per-class"] == 24
    assert readme_options(text.replace("--per-class 24", "--per-class 12"))["--per-class"] != str(help_options("review")["--per-class"])
    assert "--lowest" not in readme_options(text.replace("[--lowest 48] ", ""))
