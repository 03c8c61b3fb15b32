"""Token-bearing root:// reads: URLs, the site cache, and keeping tokens out of messages."""

from __future__ import annotations

from casa.data.sources import scrub, via_site_cache, with_token


def test_via_site_cache_keeps_the_store_path():
    url = "root://127.0.0.1:21095//store/data/demo/events_0000.root"
    assert via_site_cache(url, "root://xcache.site.org:1094") == (
        "root://xcache.site.org:1094//store/data/demo/events_0000.root"
    )
    assert via_site_cache(url, "root://10.0.0.5:22095/") == (
        "root://10.0.0.5:22095//store/data/demo/events_0000.root"
    )
    assert via_site_cache(url, None) == url
    assert via_site_cache("/local/file.root", "root://c:1") == "/local/file.root"


def test_tokens_are_attached_and_scrubbed():
    url = with_token("root://h:1//store/x.root", "aaa.bbb.ccc")
    assert url.endswith("?authz=Bearer%20aaa.bbb.ccc")
    assert "aaa.bbb" not in scrub(f"could not open {url}: permission denied")
