"""Addresses the SSRF tests check (never contacted) and the policies they check them with."""

from __future__ import annotations

from gateway.security.netguard import OutboundPolicy

DEFAULT = OutboundPolicy()
LOOPBACK = OutboundPolicy.loopback_allowed()
UNRESOLVABLE = "swarmgate-test.invalid"  # RFC 2606: never resolves

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "0.0.0.0",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.1.1",  # CGNAT: neither private nor global
    "224.0.0.1",  # multicast
    "255.255.255.255",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::7f00:1",  # IPv4-compatible loopback
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"]


def literal_url(ip: str, rest: str = "/") -> str:
    return f"http://[{ip}]{rest}" if ":" in ip else f"http://{ip}{rest}"
