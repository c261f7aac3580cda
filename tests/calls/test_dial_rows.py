"""Dial lists as CSV: the header, every kind of bad row (reported by row number), and the due times."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from calls.dial_rows import MAX_ROWS, DialListRefused, DialRow, dial_rows_read
from calls.dial_time import due_time_parse
from core.errors import InvalidRequest

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=timezone.utc)


def read(text: str | bytes, default_mode: str = "conversation") -> list[DialRow]:
    return dial_rows_read(text, now=NOW, default_mode=default_mode)


def errors(rows: list[DialRow]) -> dict[int, str]:
    return {row.row: row.error for row in rows if row.error}


def test_good_rows_are_read_with_their_row_numbers():
    rows = read("to,message,mode\n+15550001111,Hello,notify\n+15550002222,\"Hi, there\",\n")
    assert rows == [
        DialRow(row=2, to="+15550001111", message="Hello", mode="notify"),
        DialRow(row=3, to="+15550002222", message="Hi, there", mode=""),
    ]


def test_columns_in_any_order_and_any_case_with_a_spreadsheet_bom():
    rows = read("\ufeffMessage , TO,dtmfsequence\r\nHello,+15550001111,ww12#\r\n".encode("utf-8"))
    assert rows == [DialRow(row=2, to="+15550001111", message="Hello", dtmf_sequence="ww12#")]


def test_bad_rows_are_reported_by_row_number_and_the_rest_kept():
    rows = read(
        "to,message,mode\n"
        "+15550001111,Hello,\n"  # row 2: good
        "5550002222,Hello,\n"  # row 3: not E.164
        "+15550003333,,\n"  # row 4: empty message
        "+15550004444,Hello,,surprise\n"  # row 5: a cell beyond the header
        "+15550005555,Hello,shout\n"  # row 6: unknown mode
        "+15550006666,Hello,notify\n"  # row 7: good
    )
    assert [row.row for row in rows if not row.error] == [2, 7]
    bad = errors(rows)
    assert set(bad) == {3, 4, 5, 6}
    assert "to: '5550002222': Expected E.164 format" in bad[3]
    assert bad[4] == "message: empty"
    assert bad[5] == "4 cells but the header names 3 columns (a cell in no column)"
    assert bad[6] == "mode: 'shout' is not notify or conversation"


def test_a_row_with_several_problems_names_them_all():
    assert errors(read("to,message\nnope,\n")) == {2: "to: 'nope': Expected E.164 format, e.g. +15550001234; message: empty"}


def test_a_short_row_has_empty_cells():
    assert errors(read("to,message\n+15550001111\n")) == {2: "message: empty"}


def test_empty_trailing_cells_beyond_the_header_are_not_an_error():
    assert errors(read("to,message\n+15550001111,Hi,,\n")) == {}


def test_blank_lines_are_skipped_and_row_numbers_stay_the_files():
    rows = read("to,message\n\n+15550001111,Hi\n,\n+15550002222,Hi\n")
    assert [row.row for row in rows] == [3, 5]


def test_a_quoted_cell_over_several_lines_is_one_row_numbered_where_it_starts():
    rows = read('to,message\n+15550001111,"line one\nline two"\n+15550002222,Hi\n')
    assert [(row.row, row.message) for row in rows] == [(2, "line one\nline two"), (4, "Hi")]


def test_dtmf_is_checked_and_needs_conversation_mode():
    bad = errors(read(
        "to,message,mode,dtmfSequence\n"
        "+15550001111,Hi,conversation,12#\n"
        "+15550002222,Hi,notify,12#\n"
        "+15550003333,Hi,,12x\n"
        "+15550004444,Hi,,12\n",
        default_mode="notify",
    ))
    assert bad == {
        3: "dtmfSequence requires conversation mode",
        4: "dtmfSequence: digits may only contain digits, *, #, comma, w, p",
        5: "dtmfSequence requires conversation mode",  # the default mode is notify
    }


def test_the_at_column_sets_a_rows_due_time():
    rows = read("to,message,at\n+15550001111,Hi,2026-12-05T10:30:00+01:00\n+15550002222,Hi,+15m\n+15550003333,Hi,\n")
    assert [row.at for row in rows] == [NOW + timedelta(minutes=30), NOW + timedelta(minutes=15), None]


def test_a_bad_at_is_a_row_error():
    bad = errors(read("to,message,at\n+15550001111,Hi,2026-12-05T08:00:00Z\n+15550002222,Hi,tomorrow\n"))
    assert "is in the past" in bad[2] and bad[2].startswith("at: ")
    assert bad[3].startswith("at: cannot read 'tomorrow'")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("to,mesage\n+15550001111,Hi\n", "unknown column 'mesage' in the header (columns: to, message, mode, dtmfSequence, at); nothing was dialed"),
        ("to,message,name\n+15550001111,Hi,Bob\n", "unknown column 'name'"),
        ("to,message,To\n+15550001111,Hi,+15550001111\n", "column 'to' appears twice in the header"),
        ("to,,message\n+15550001111,,Hi\n", "header column 2 has no name"),
        ("to\n+15550001111\n", "the header has no 'message' column"),
        ("mode\nnotify\n", "the header has no 'to' and no 'message' column"),
        ("", "dial list is empty"),
        ("\n\n", "dial list is empty"),
        ("to,message\n", "dial list has a header but no rows"),
        ("to,message\n\n\n", "dial list has a header but no rows"),
        (b"to,message\n+15550001111,caf\xe9\n", "dial list is not UTF-8 text (byte 27 cannot be read)"),
        ("to,message\n+15550001111,a\x00b\n", "dial list is not a CSV text file"),
    ],
)
def test_a_bad_file_is_refused_whole(text, message):
    with pytest.raises(DialListRefused) as refused:
        read(text)
    assert message in refused.value.message


def test_too_many_rows_refuse_the_file():
    with pytest.raises(DialListRefused, match=f"more than {MAX_ROWS} rows"):
        read("to,message\n" + "+15550001111,Hi\n" * (MAX_ROWS + 1))


def test_too_large_a_file_is_refused_before_it_is_read():
    with pytest.raises(DialListRefused, match="over 5 MB"):
        read(b"to,message\n" + b"+15550001111," + b"x" * (5 * 1024 * 1024) + b"\n")


def test_a_long_message_is_a_row_error():
    assert errors(read("to,message\n+15550001111," + "x" * 4001 + "\n")) == {2: "message: longer than 4000 characters"}


# --- due times --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-05T10:30:00+01:00", NOW + timedelta(minutes=30)),
        ("2026-12-05T09:30:00Z", NOW + timedelta(minutes=30)),
        ("2026-12-05 09:30Z", NOW + timedelta(minutes=30)),
        ("+90s", NOW + timedelta(seconds=90)),
        ("+15m", NOW + timedelta(minutes=15)),
        ("+2h", NOW + timedelta(hours=2)),
        ("+1d", NOW + timedelta(days=1)),
        ("+1h30m", NOW + timedelta(minutes=90)),
        (" +0s ", NOW),
    ],
)
def test_due_times(text, expected):
    assert due_time_parse(text, now=NOW) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-12-05T10:30:00", "at: '2026-12-05T10:30:00' has no UTC offset; add one, e.g. 2026-12-05T10:30:00Z or 2026-12-05T10:30:00+01:00"),
        ("2026-12-05T08:59:59Z", "at: '2026-12-05T08:59:59Z' is in the past (it is now 2026-12-05T09:00:00Z)"),
        ("tomorrow", "at: cannot read 'tomorrow'; give an ISO 8601 time with its UTC offset"),
        ("+15", "at: cannot read '+15'"),
        ("-5m", "at: cannot read '-5m'"),
        ("+366d", "at: '+366d' is more than 365 days ahead"),
        ("+99999999999999d", "at: '+99999999999999d' is more than 365 days ahead"),
        ("2030-01-01T00:00:00Z", "is more than 365 days ahead"),
    ],
)
def test_bad_due_times_are_refused_naming_the_param(text, message):
    with pytest.raises(InvalidRequest) as refused:
        due_time_parse(text, now=NOW)
    assert message in refused.value.message
