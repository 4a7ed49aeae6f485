"""What every connector's requests go through: the URL guard (SSRF), redirects, size cap."""

from __future__ import annotations

import pytest

from engagement.sources.base import BlockedUrl, HttpClient, HttpSettings, MalformedResponse, check_url_allowed
from tests.upstream import FakeUpstream, Reply


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://127.9.9.9:8080/x", "http://localhost:8000/",  # loopback, also by name
    "http://10.1.2.3/", "http://172.16.0.1/", "http://192.168.1.1/",           # private
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/",           # link-local, cloud metadata
    "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[fd00::1]/",        # IPv6 forms
    "http://0.0.0.0/", "http://100.64.0.1/",                                   # unspecified, shared
])
def test_non_public_addresses_are_refused(url):
    with pytest.raises(BlockedUrl, match="non-public address"):
        check_url_allowed(url, allow_private=False)


@pytest.mark.parametrize("url", ["ftp://example.org/", "file:///etc/passwd", "gopher://x/", "http:///nohost"])
def test_only_http_and_https_urls_with_a_host_are_allowed(url):
    with pytest.raises(BlockedUrl):
        check_url_allowed(url, allow_private=True)


def test_the_setting_or_a_trusted_host_lifts_the_guard():
    check_url_allowed("http://127.0.0.1:8080/", allow_private=True)
    check_url_allowed("http://10.0.0.5/", allow_private=False, trusted_hosts=frozenset({"10.0.0.5"}))
    check_url_allowed("http://10.0.0.5:81/", allow_private=False, trusted_hosts=frozenset({"10.0.0.5:81"}))
    with pytest.raises(BlockedUrl):
        check_url_allowed("http://10.0.0.5:82/", allow_private=False, trusted_hosts=frozenset({"10.0.0.5:81"}))


@pytest.mark.parametrize("target", ["private", "http://169.254.169.254/latest/meta-data/", "http://[::1]:9/",
                                    "http://10.0.0.1/"])
def test_a_redirect_to_a_non_public_address_is_refused_before_any_request(target):
    first, second = FakeUpstream().start(), FakeUpstream().start()
    try:
        location = f"{second.url}/secret" if target == "private" else target
        first.routes["/feed"] = lambda path, query: Reply(302, "", {"Location": location})
        second.routes["/secret"] = lambda path, query: Reply(200, {"secret": True})
        host, port = first.server.server_address[:2]
        client = HttpClient(HttpSettings(allow_private=False, trusted_hosts=frozenset({f"{host}:{port}"})))
        with pytest.raises(BlockedUrl):
            client.get(f"{first.url}/feed")
        assert len(first.requests) == 1 and second.requests == []
    finally:
        first.stop()
        second.stop()


def test_redirects_between_allowed_hosts_are_followed(upstream):
    upstream.routes["/old"] = lambda path, query: Reply(301, "", {"Location": "/new"})
    upstream.routes["/new"] = lambda path, query: Reply(200, {"ok": True})
    response = HttpClient(HttpSettings(allow_private=True)).get(f"{upstream.url}/old")
    assert response.json() == {"ok": True}


def test_a_response_over_the_size_cap_is_refused(upstream):
    upstream.routes["/huge"] = lambda path, query: Reply(200, "x" * 2_000_000, {"Content-Type": "text/plain"})
    with pytest.raises(MalformedResponse, match="cap"):
        HttpClient(HttpSettings(allow_private=True, max_bytes=1_000_000)).get(f"{upstream.url}/huge")
