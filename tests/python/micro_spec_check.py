"""NATS micro spec v1 conformance of a running `snapvault serve --nats` node, checked with the
nats-py client's own parsers (the pinned nats-py of scripts/test-all.sh).

    micro_spec_check.py NATS_URL [PREFIX] [SERVICE_NAME]

Run by tests/nats_micro.rs against a node nobody else has sent requests to yet. It sends a few
good and a few bad requests to the API, then asks $SRV.PING / $SRV.INFO / $SRV.STATS on all
three subject forms ($SRV.<VERB>, $SRV.<VERB>.<name>, $SRV.<VERB>.<name>.<id>) and parses
every reply with nats.micro's ServicePing / ServiceInfo / ServiceStats.from_dict: a missing
field is a KeyError, so parsing at all proves the replies are schema-complete. Then it checks
that STATS counted exactly the requests and the error replies it sent, per endpoint.

Exit 0 when everything holds; otherwise a traceback or an assertion message, exit 1.
"""

import asyncio
import json
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone

import nats
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

JSON = {"Content-Type": "application/json"}


async def main(url: str, prefix: str, name: str) -> None:
    nc = await nats.connect(url, connect_timeout=10)
    api = f"{prefix}.api.v1"
    sent = Counter()  # endpoint name -> requests sent
    errors = Counter()  # endpoint name -> error replies received
    last_error = {}  # endpoint name -> "<code>: <message>" of the last error reply

    async def call(op: str, body, endpoint: str, expect_error: str = ""):
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        msg = await nc.request(f"{api}.{op}", payload, timeout=20, headers=JSON)
        sent[endpoint] += 1
        headers = msg.headers or {}
        code = headers.get("Snapvault-Error-Code", "")
        assert code == expect_error, f"{op} {body!r}: error {code!r}, wanted {expect_error!r}: {msg.data!r}"
        if code:
            # The structured error body our clients rely on, plus the micro-spec headers.
            err = json.loads(msg.data)
            assert err["code"] == code, err
            assert headers.get("Nats-Service-Error-Code", "").isdigit(), headers
            assert headers.get("Nats-Service-Error"), headers
            errors[endpoint] += 1
            last_error[endpoint] = f"{code}: {headers['Nats-Service-Error']}"
        return json.loads(msg.data)

    # Good requests.
    await call("collection.create", {"name": "py1"}, "collection_create")
    await call("collection.describe", {"name": "py1"}, "collection_describe")
    listing = await call("collection.list", {}, "collection_list")
    assert [c["name"] for c in listing["collections"]] == ["py1"], listing
    await call("id.allocate", {}, "id_allocate")
    # Bad ones: a domain error, a wrong field type, garbage, an unknown op, a duplicate.
    await call("collection.describe", {"name": "nope"}, "collection_describe", "not_found")
    await call("collection.create", {"name": 5}, "collection_create", "invalid_argument")
    await call("collection.create", b"{not json", "collection_create", "invalid_argument")
    await call("collection.explode", {}, "unknown_op", "invalid_argument")
    await call("collection.create", {"name": "py1"}, "collection_create", "already_exists")

    # The instance id, for the third subject form.
    first = ServicePing.from_dict(json.loads((await nc.request(f"$SRV.PING.{name}", b"", timeout=10)).data))
    for suffix in ("", f".{name}", f".{name}.{first.id}"):
        msg = await nc.request(f"$SRV.PING{suffix}", b"", timeout=10)
        data = json.loads(msg.data)
        assert data["type"] == "io.nats.micro.v1.ping_response", data
        ping = ServicePing.from_dict(data)
        assert (ping.name, ping.id) == (name, first.id), data
        assert ping.metadata.get("api") == api and ping.version, data

        msg = await nc.request(f"$SRV.INFO{suffix}", b"", timeout=10)
        data = json.loads(msg.data)
        assert data["type"] == "io.nats.micro.v1.info_response", data
        info = ServiceInfo.from_dict(data)
        assert (info.name, info.id) == (name, first.id), data
        assert info.metadata.get("node_id") and info.description, data
        subjects = {e.name: (e.subject, e.queue_group) for e in info.endpoints}
        assert subjects["collection_create"] == (f"{api}.collection.create", "q"), subjects
        assert subjects["unknown_op"][0] == f"{api}.>", subjects
        assert all(isinstance(e.metadata, dict) for e in info.endpoints), data

        msg = await nc.request(f"$SRV.STATS{suffix}", b"", timeout=10)
        data = json.loads(msg.data)
        assert data["type"] == "io.nats.micro.v1.stats_response", data
        stats = ServiceStats.from_dict(data)
        assert (stats.name, stats.id) == (name, first.id), data
        assert stats.metadata.get("api") == api, data
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        assert abs(now - stats.started) < timedelta(hours=1), stats.started
        check_stats(stats, sent, errors, last_error)
    await nc.close()
    total = sum(errors.values())
    print(f"micro spec: PING/INFO/STATS parsed on 3 subject forms; {sum(sent.values())} requests, {total} error replies counted")


def check_stats(stats: ServiceStats, sent: Counter, errors: Counter, last_error: dict) -> None:
    by_name = {e.name: e for e in stats.endpoints}
    for endpoint, n in sent.items():
        e = by_name[endpoint]
        assert e.num_requests == n, f"{endpoint}: num_requests {e.num_requests}, sent {n}"
        assert e.num_errors == errors[endpoint], f"{endpoint}: num_errors {e.num_errors}, error replies {errors[endpoint]}"
        assert e.last_error == last_error.get(endpoint, ""), f"{endpoint}: last_error {e.last_error!r}, wanted {last_error.get(endpoint, '')!r}"
        if n:
            assert e.processing_time > 0 and 0 < e.average_processing_time <= e.processing_time, e
    untouched = [e for e in stats.endpoints if e.name not in sent]
    assert untouched, "the service has endpoints this check did not call"
    for e in untouched:
        assert (e.num_requests, e.num_errors, e.last_error) == (0, 0, ""), e
    assert sum(e.num_errors for e in stats.endpoints) == sum(errors.values())


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 4:
        sys.exit(__doc__)
    url = sys.argv[1]
    prefix = sys.argv[2] if len(sys.argv) > 2 else "snapvault"
    name = sys.argv[3] if len(sys.argv) > 3 else "snapvault"
    asyncio.run(main(url, prefix, name))
