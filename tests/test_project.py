"""Project hygiene that CI depends on."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```bash\n")[1:]
    return [block.split("```", 1)[0].strip() for block in blocks]


def test_ci_runs_exactly_the_readme_test_command():
    commands = _quick_start_commands()
    assert len(commands) == 2, "the README's quick start has exactly two commands: main job, tests"
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci_lines[-1] == commands[1]
    assert "monai.bundle run training --config_file configs/train.json" in commands[0]
