"""bench.pipeline_cost's arguments and report (the measurement itself runs in the smoke test)."""

from __future__ import annotations

import pytest
from bench.pipeline_cost import MODULE_SETS, markdown, parse_arguments


def _row(modules: tuple[str, ...], cpu: float) -> dict[str, object]:
    return {"modules": list(modules), "size": 102400, "messages": 300, "in_flight": 10,
            "user_ms": round(cpu - 0.01, 2), "system_ms": 0.01, "cpu_ms": cpu, "wall_ms": 22.0,
            "problems": []}  # fmt: skip


def test_in_flight_is_a_list_of_rows_and_quick_overrides_the_scenario() -> None:
    arguments = parse_arguments(["--in-flight", "1,4,10", "--messages", "50"])
    assert arguments.in_flight == [1, 4, 10]
    assert arguments.messages == 50
    quick = parse_arguments(["--quick", "--in-flight", "10"])
    assert (quick.size, quick.messages, quick.in_flight) == (2048, 20, [1])


@pytest.mark.parametrize("bad", [["--in-flight", "1,x"], ["--in-flight", "0"], ["--messages", "0"]])
def test_bad_arguments_are_refused_naming_the_option(
    bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_arguments(bad)
    assert stopped.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_the_report_names_each_module_set_and_judges_against_one_millisecond() -> None:
    text = markdown([_row(MODULE_SETS["all"], 2.21), _row(MODULE_SETS["in-process"], 0.47),
                     _row(MODULE_SETS["none"], 0.02)])  # fmt: skip
    lines = text.splitlines()
    assert "| 100 KB | 10 | all | **2.21** | 2.20 / 0.01 | 22.0 | MISSED |" in lines
    assert "| 100 KB | 10 | in-process | **0.47** | 0.46 / 0.01 | 22.0 | ok |" in lines
    assert "| 100 KB | 10 | none | **0.02** | 0.01 / 0.01 | 22.0 | ok |" in lines
