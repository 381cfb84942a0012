"""Reads and sends CloudEvents with the Python CloudEvents SDK (PyPI `cloudevents` 2.x,
its `cloudevents.core` API) over NATS (PyPI `nats-py`), for the conformance test in
cloudevents.rs. The SDK has no NATS binding; the NATS binding maps attributes to
headers as the HTTP binding does, so the SDK's HTTP conversion gives the headers and
body that are sent and read here.

Usage:
  cloudevents_sdk.py parse FILE
      FILE holds a JSON list of captured messages {"headers": {...}, "body": "..."};
      prints a JSON list: each message as the SDK read it (its attributes and data).
  cloudevents_sdk.py send URL SUBJECT MODE TYPE DATA ID
      MODE is `structured` or `binary`; DATA is the JSON of `data`; sends the event as a
      request (signed with the seed in PEER_SEED, when set) and prints {"code": <Nats-Service-Error-Code or 0>, "reply": <the reply
      as the SDK read it>}.
"""
import asyncio
import base64
import datetime
import json
import os
import sys

import nats
import nkeys
from cloudevents.core.bindings.http import (HTTPMessage, from_http, to_binary,
                                            to_structured)
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent


def sign(seed, subject, payload):
    """The signature headers of docs/trust-model.md over the body as sent."""
    kp = nkeys.from_seed(seed.encode())
    signed_at = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    signed = b"\n".join([b"toronto-request-signature-v1", subject.encode(),
                         signed_at.encode(), b"", payload])
    return {
        "Toronto-Signer": kp.public_key.decode(),
        "Toronto-Signature": base64.urlsafe_b64encode(kp.sign(signed)).rstrip(b"=").decode(),
        "Toronto-Signed-At": signed_at,
    }


def read(headers, body):
    """One message as the SDK reads it (structured or binary, by its headers)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    event = from_http(HTTPMessage(headers=lowered, body=body), JSONFormat())
    attributes = {}
    for name, value in event.get_attributes().items():
        attributes[name] = value.isoformat() if hasattr(value, "isoformat") else value
    return {"attributes": attributes, "data": event.get_data()}


def parse(path):
    with open(path) as f:
        messages = json.load(f)
    print(json.dumps([read(m["headers"], m["body"].encode()) for m in messages]))


async def send(url, subject, mode, type_, data, id_):
    event = CloudEvent(
        attributes={
            "type": type_,
            "source": "python-sdk://tests/cloudevents",
            "id": id_,
            "datacontenttype": "application/json",
            "subject": "conformance",
            "correlationid": "flow-" + id_,
        },
        data=json.loads(data),
    )
    convert = to_structured if mode == "structured" else to_binary
    message = convert(event, JSONFormat())
    headers = dict(message.headers)
    if os.environ.get("PEER_SEED"):
        headers.update(sign(os.environ["PEER_SEED"], subject, message.body))
    nc = await nats.connect(url)
    try:
        reply = await nc.request(subject, message.body, timeout=10, headers=headers)
    finally:
        await nc.close()
    headers = dict(reply.headers or {})
    code = int(headers.get("Nats-Service-Error-Code", "0"))
    print(json.dumps({"code": code, "reply": read(headers, reply.data)}))


def main():
    if sys.argv[1] == "parse":
        parse(sys.argv[2])
    else:
        asyncio.run(send(*sys.argv[2:8]))


if __name__ == "__main__":
    main()
