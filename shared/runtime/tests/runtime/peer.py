"""A peer agent in Python that signs a request the way docs/trust-model.md says.

Usage: peer.py NATS_URL SUBJECT [--bad-signature]; the seed comes from PEER_SEED.
Prints the reply's error code (or 0) and its data as JSON on one line.
"""
import asyncio
import base64
import datetime
import json
import os
import sys
import uuid

import nats
import nkeys


def sign(seed: bytes, subject: str, payload: bytes, on_behalf_of: str = ""):
    kp = nkeys.from_seed(seed)
    signed_at = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    signed = b"\n".join([
        b"toronto-request-signature-v1",
        subject.encode(),
        signed_at.encode(),
        on_behalf_of.encode(),
        payload,
    ])
    headers = {
        "Toronto-Signer": kp.public_key.decode(),
        "Toronto-Signature": base64.urlsafe_b64encode(kp.sign(signed)).rstrip(b"=").decode(),
        "Toronto-Signed-At": signed_at,
    }
    if on_behalf_of:
        headers["Toronto-On-Behalf-Of"] = on_behalf_of
    return headers


async def main():
    url, subject = sys.argv[1], sys.argv[2]
    bad = "--bad-signature" in sys.argv
    envelope = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "toronto://agents/python-peer",
        "type": "ai.toronto.devops.test.echo.v2",
        "datacontenttype": "application/json",
        "data": {"text": "from python"},
    }
    payload = json.dumps(envelope).encode()
    headers = sign(os.environ["PEER_SEED"].encode(), subject, payload)
    headers["Content-Type"] = "application/cloudevents+json"
    if bad:
        # Signed, then changed: the signature no longer matches.
        payload = payload.replace(b"from python", b"from pythoN")
    nc = await nats.connect(url)
    reply = await nc.request(subject, payload, timeout=5, headers=headers)
    code = int((reply.headers or {}).get("Nats-Service-Error-Code", "0"))
    print(json.dumps({"code": code, "data": json.loads(reply.data)["data"]}))
    await nc.close()


asyncio.run(main())
