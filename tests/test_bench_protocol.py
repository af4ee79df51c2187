"""Tests for lean.bench.protocol: each message the harness and its subprocesses exchange reads back as sent."""

from __future__ import annotations

from lean.bench import protocol


def test_time_requests_and_replies_round_trip():
    line = protocol.time_request(32, 128, 4, 2)
    assert protocol.parse_time_request(line) == protocol.TimeRequest(32, 128, 4, 2)
    assert protocol.parse_time_request(f"{protocol.TIME} 1 8 3") == protocol.TimeRequest(1, 8, 3, 0)  # untimed: 0
    assert protocol.parse_time_request(protocol.END) is None and protocol.parse_time_request("") is None
    reply = protocol.times_reply(32, 128, [0.25, 0.0031])
    assert protocol.is_reply(reply) and not protocol.is_note(reply)
    assert protocol.parse_times_reply(reply) == protocol.TimesReply(32, 128, [0.25, 0.0031])
    skipped = protocol.parse_times_reply(protocol.times_reply(1, 512, None))
    assert skipped.seconds is None and (skipped.batch_size, skipped.seq_length) == (1, 512)
    assert protocol.is_reply(protocol.READY)


def test_notes_for_the_display():
    line = protocol.phase_line("latency batch 1 x 128 tokens")
    assert protocol.is_note(line) and protocol.parse_phase(line) == "latency batch 1 x 128 tokens"
    assert protocol.parse_phase("some log line") is None
    assert protocol.parse_progress(protocol.progress_line(3, 98)) == (3, 98)
    assert protocol.parse_progress(protocol.progress_line(0, 0)) is None  # no total yet: no eta
    assert protocol.parse_progress(f"{protocol.PROGRESS} x 9") is None
