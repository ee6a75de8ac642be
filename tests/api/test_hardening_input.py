"""Hostile input that used to be a 500: deeply nested JSON on every route that parses JSON, and webhook_url values
that urlsplit, the port or the IDNA codec choke on; IPv6 forms that embed an IPv4 address (issue 38, items 3, 4)."""

import socket

import pytest
from rest_framework.test import APIClient

from diffusion_api.jobs import webhooks
from diffusion_api.jobs.parsers import MAX_JSON_DEPTH

pytestmark = pytest.mark.django_db

DEEP = "[" * 8100  # python3 -c "print('['*8100)": a RecursionError in the stock JSON parser


def _answer(client, path, body, content_type="application/json"):
    client.raise_request_exception = False  # a 500 must show as a status here, not as the test's own exception
    if isinstance(body, dict):
        return client.post(path, body, format="json")
    return client.post(path, data=body, content_type=content_type)


@pytest.mark.parametrize(
    "body",
    [
        DEEP,
        "[" * 8100 + "]" * 8100,  # well-formed, still too deep
        '{"prompt": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + "}",  # deep, but under Python's limit
    ],
)
@pytest.mark.parametrize("path", ["/api/v1/jobs/", "/api/v1/auth/token/"])
def test_deeply_nested_json_is_a_400_on_every_route_that_parses_json(alice_client, published, path, body):
    response = _answer(alice_client, path, body)
    assert response.status_code == 400, response.content[:200]
    assert "nested" in response.json()["detail"]
    assert published == []


def test_deeply_nested_json_is_a_400_with_a_charset_too(alice_client, published):
    response = _answer(alice_client, "/api/v1/jobs/", DEEP, content_type="application/json; charset=utf-8")
    assert response.status_code == 400 and "nested" in response.json()["detail"]


def test_the_token_view_parses_json_with_the_same_parser():
    # ObtainAuthToken brings its own parser list; the token view must not fall back to DRF's stock JSON parser.
    from diffusion_api.jobs.parsers import SafeJSONParser
    from diffusion_api.jobs.views import TokenView

    assert SafeJSONParser in TokenView.parser_classes
    assert all(
        parser.media_type != "application/json" or parser is SafeJSONParser for parser in TokenView.parser_classes
    )


def test_ordinary_nesting_still_parses(alice_client, published):
    # Nested but sane JSON reaches the serializer, which names the field (not the parser).
    response = _answer(APIClient(), "/api/v1/auth/token/", '{"username": [[["a"]]], "password": "x"}')
    assert response.status_code == 400 and "username" in response.json()


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://example.com:99999/", "port"),
        ("http://example.com:0/", "port"),
        ("http://example.com:abc/", "port"),
        ("http://[::1/", "IPv6"),
        ("http://[not-an-ip]/", "IPv6"),
        ("http://a..example.com/", "label"),
        ("http://" + "a" * 64 + ".example.com/", "label"),
        ("http://" + "a." * 127 + "com/", "host"),
        ("http://exa mple.com/", "spaces or control"),
        ("http://example.com/a\tb", "spaces or control"),
        ("http://ex_ample!.com/", "label"),
        ("http://:80/", "host"),
    ],
)
def test_malformed_webhook_urls_are_a_400_naming_the_problem(alice_client, published, settings, url, reason):
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the URL's form alone must be refused, before any address check
    response = _answer(alice_client, "/api/v1/jobs/", {"prompt": "x", "webhook_url": url})
    assert response.status_code == 400, (url, response.content[:300])
    assert reason in response.json()["webhook_url"][0], response.json()
    assert published == []


@pytest.mark.parametrize(
    "address",
    [
        "::127.0.0.1",  # IPv4-compatible (::/96)
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::ffff:8.8.8.8",  # mapped, even when the IPv4 is public: an embedded form is never a webhook host
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::808:808",  # NAT64 of a public address
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:808:808::1",  # 6to4 of a public address
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "::",
        "ff02::1",
        "fe80::1",
        "fc00::1",
    ],
)
def test_ipv6_forms_that_embed_ipv4_or_are_not_global_are_refused(alice_client, published, settings, address):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    url = f"http://[{address}]:8080/hook"
    response = _answer(alice_client, "/api/v1/jobs/", {"prompt": "x", "webhook_url": url})
    assert response.status_code == 400, (url, response.content[:300])
    assert "address" in response.json()["webhook_url"][0]


@pytest.mark.parametrize("address", ["224.0.0.1", "240.0.0.1", "0.0.0.0", "100.64.0.1", "192.0.0.8", "255.255.255.255"])
def test_multicast_reserved_and_shared_ipv4_are_refused(address):
    with pytest.raises(webhooks.WebhookRefused, match="address"):
        webhooks.check_address(__import__("ipaddress").ip_address(address))


def test_a_hostname_is_refused_when_any_of_its_addresses_is_refused(monkeypatch, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80))]
    answers.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:127.0.0.1", 80, 0, 0)))
    monkeypatch.setattr(webhooks.socket, "getaddrinfo", lambda *a, **k: answers)
    with pytest.raises(webhooks.WebhookRefused, match=r"resolves to address ::ffff:(7f00:1|127\.0\.0\.1)"):
        webhooks.check_webhook_url("http://hooks.example.com/x")


def test_a_public_address_and_an_idn_host_pass(monkeypatch, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    answers = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:2800:220:1:248:1893:25c8:1946", 443, 0, 0))]
    monkeypatch.setattr(webhooks.socket, "getaddrinfo", lambda *a, **k: answers)
    target = webhooks.resolve_webhook_target("https://Bücher.example/hook?a=1#frag")
    assert target.host == "xn--bcher-kva.example" and target.port == 443 and target.path == "/hook?a=1"
    assert [str(a) for a in target.addresses] == ["2606:2800:220:1:248:1893:25c8:1946"]
