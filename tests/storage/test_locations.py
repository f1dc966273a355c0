"""Locations: transient failures told from final ones."""

from cgi2real.storage.locations import is_transient


def test_transient_failures_are_told_from_final_ones():
    assert is_transient(OSError("AWS Error UNKNOWN (HTTP status 503) during HeadObject operation: No response body."))
    assert is_transient(OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, Failure when receiving data"))
    assert is_transient(TimeoutError("read timed out")) and is_transient(ConnectionResetError())
    assert not is_transient(FileNotFoundError("Path does not exist 'b/k.jpg'"))
    assert not is_transient(OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied"))
