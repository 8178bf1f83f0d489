"""Failures from the layers below become the right wire error codes with readable messages."""

from __future__ import annotations

import errno

from gitmld.daemon.errors import classify


class RemoteError(Exception):
    pass


class RemoteUnavailable(RemoteError):
    pass


class NotFound(Exception):
    pass


class Custom(Exception):
    wire_code = "key"


def test_codes_follow_the_class_hierarchy():
    assert classify(RemoteUnavailable("s3://b/p unreachable"))[0] == "remote"
    assert classify(NotFound("object sha256:ab not in s3://b/p"))[0] == "not_found"
    assert classify(Custom("no keyfile at /x"))[0] == "key"


def test_disk_errors_name_path_and_cause():
    code, message = classify(OSError(errno.ENOSPC, "No space left on device", "/cache/seg/1"))
    assert code == "io"
    assert "No space left on device" in message and "/cache/seg/1" in message


def test_unexpected_errors_are_internal_and_point_to_the_log():
    code, message = classify(ZeroDivisionError("division by zero"))
    assert code == "internal"
    assert "ZeroDivisionError" in message and "daemon log" in message
