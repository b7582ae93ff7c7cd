import json
import logging

from services.common.logging_setup import configure_logging


def test_json_lines_carry_service_and_extra_fields(capsys):
    configure_logging("feedback", level="INFO", fmt="json")
    log = logging.getLogger("flywheel.test")
    log.info("ingested", extra={"events_per_s": 1520.5, "batch": 32})
    log.debug("not shown at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["service"] == "feedback" and first["level"] == "INFO"
    assert first["msg"] == "ingested" and first["logger"] == "flywheel.test"
    assert (first["events_per_s"], first["batch"]) == (1520.5, 32)
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_text_format_for_people(capsys):
    configure_logging("cli", level="WARNING", fmt="text")
    logging.getLogger("x").warning("careful")
    assert "WARNING cli x: careful" in capsys.readouterr().err
