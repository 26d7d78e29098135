"""Which addresses an agent's HTTP tools may reach.

Tool URLs come from API users, and the server usually sits inside a private network (a metadata service at
169.254.169.254, a database on 10.x). Every host is resolved here, every address it resolves to is checked, and the
request then goes to the address that was checked, so a DNS answer that changes between check and connect
(rebinding) cannot redirect it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedAddress(Exception):
    """The host resolves to an address tools may not reach."""


class UnresolvableHost(Exception):
    """The host has no address (DNS failure)."""


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1 on the wire
    if (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified or not ip.is_global):  # is_global also excludes 100.64/10 (carrier-grade NAT)
        return False
    return not (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)


async def resolve_checked(host: str, port: int, *, allow_private: bool) -> IPAddress:
    """The address to connect to for `host`, after checking every address it resolves to."""
    try:
        literal = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        addresses = [literal]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise UnresolvableHost(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
        addresses = []
        for info in infos:
            ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise UnresolvableHost(f"cannot resolve {host!r}")
    if not allow_private:
        # All of them, not just the first: a name that mixes public and private answers is not to be trusted.
        for ip in addresses:
            if not is_public(ip):
                raise RefusedAddress(f"{host!r} resolves to {ip}, a private or reserved address tools may not reach")
    return addresses[0]


SAVE_RESOLVE_TIMEOUT_SECS = 3.0  # an API request waits this long at most for DNS


async def refused_on_save(host: str, port: int) -> RefusedAddress | None:
    """Why a URL being saved (a webhook, an agent's endpoint) is refused, or None. A host that does not resolve now,
    or not within SAVE_RESOLVE_TIMEOUT_SECS, is accepted: every connection resolves and checks it again."""
    try:
        async with asyncio.timeout(SAVE_RESOLVE_TIMEOUT_SECS):
            await resolve_checked(host, port, allow_private=False)
    except RefusedAddress as exc:
        return exc
    except Exception:
        return None
    return None
