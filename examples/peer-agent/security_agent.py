#!/usr/bin/env python3
"""A security agent, as a peer of the Toronto DevOps agent (docs/peers.md).

It does the two things a peer does, signing everything it sends with its NKey seed:

  security_agent.py serve [--once]
      Answer the planner's security gate (toronto.agents.security.v1.scan): pass an image
      pinned to a version, fail one tagged `latest` or untagged. Prints "ready" once
      subscribed; with --once, exits after the first answer.

  security_agent.py deploy SERVICE VERSION ENVIRONMENT
      Hand a deploy to the planner (toronto.devops.v1.planner.submit) and print the reply as
      JSON on one line: {"code": 0, "data": {"plan_id": ...}} or the error code and body.

Environment:
  TORONTO_NATS_URL          NATS URL (default nats://127.0.0.1:4222)
  TORONTO_NATS_USER, TORONTO_NATS_PASSWORD
                            the peer's NATS user (deploy/nats/permissions.conf: `security`)
  TORONTO_NATS_TLS_CA_FILE  CA of the NATS server's certificate (a private CA)
  TORONTO_IDENTITY_FILE     the agent's NKey seed file, mode 0600 (`toronto identity init`)

Register its key once, as an admin:
  toronto identity add security-agent --kind agent --role operator \
    --key "$(toronto identity whoami --file security.nk)" --source toronto://agents/security

Needs `pip install nats-py nkeys`.
"""
import argparse
import asyncio
import base64
import datetime
import json
import os
import ssl
import stat
import sys
import uuid

import nats
import nkeys

SOURCE = "toronto://agents/security"
SCAN_SUBJECT = "toronto.agents.security.v1.scan"
SUBMIT_SUBJECT = "toronto.devops.v1.planner.submit"
CONTENT_TYPE = "application/cloudevents+json"


def load_seed(path: str) -> bytes:
    """The seed from a file only its owner may read (as the Rust services insist)."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        sys.exit(f"{path} may be read by others (mode {mode:o}); chmod 600 it")
    with open(path, "rb") as f:
        return f.read().strip()


def sign(seed: bytes, subject: str, payload: bytes, on_behalf_of: str = "") -> dict:
    """Headers that sign `payload` for `subject` (docs/trust-model.md): sign last."""
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
        "Content-Type": CONTENT_TYPE,
    }
    if on_behalf_of:
        headers["Toronto-On-Behalf-Of"] = on_behalf_of
    return headers


def envelope(type_: str, data: dict, cause: dict | None = None) -> dict:
    """A CloudEvents 1.0 envelope; a reply keeps the flow's correlation id."""
    env = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": SOURCE,
        "type": type_,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "datacontenttype": "application/json",
        "data": data,
    }
    if cause:
        env["correlationid"] = cause.get("correlationid", cause.get("id"))
        env["causationid"] = cause.get("id")
    return env


def scan(image: str) -> dict:
    """The verdict on `image`. A real agent runs its scanner here."""
    name = image.rsplit("/", 1)[-1]
    tag = name.split(":", 1)[1] if ":" in name else ""
    if tag in ("", "latest"):
        return {"passed": False,
                "reason": f"image {image} is not pinned to a version",
                "findings": {"unpinned": [image]}}
    return {"passed": True, "reason": f"no known vulnerabilities in {image}"}


async def connect():
    options = {"servers": os.environ.get("TORONTO_NATS_URL", "nats://127.0.0.1:4222")}
    user = os.environ.get("TORONTO_NATS_USER")
    if user:
        options["user"] = user
        options["password"] = os.environ["TORONTO_NATS_PASSWORD"]
        # The only inbox the peer's NATS user may read.
        options["inbox_prefix"] = f"_INBOX_{user}"
    ca = os.environ.get("TORONTO_NATS_TLS_CA_FILE")
    if ca:
        options["tls"] = ssl.create_default_context(cafile=ca)
    return await nats.connect(**options)


async def serve(seed: bytes, once: bool):
    nc = await connect()
    done = asyncio.Event()

    async def on_scan(msg):
        try:
            request = json.loads(msg.data)
            verdict = scan(request["data"]["image"])
        except (ValueError, KeyError, TypeError) as e:
            verdict = {"passed": False, "reason": f"cannot read the scan request: {e}"}
            request = None
        payload = json.dumps(envelope("ai.toronto.devops.gate.verdict.v1", verdict,
                                      request)).encode()
        # The planner asks for a signed verdict (Toronto-Sign-Reply): sign it over the
        # reply subject, so that only this key can pass the gate for this agent.
        await nc.publish(msg.reply, payload, headers=sign(seed, msg.reply, payload))
        if once:
            done.set()

    await nc.subscribe(SCAN_SUBJECT, queue="security-agent", cb=on_scan)
    await nc.flush()
    print("ready", flush=True)
    if once:
        await done.wait()
        await nc.flush()
    else:
        await asyncio.Event().wait()
    await nc.close()


async def deploy(seed: bytes, service: str, version: str, environment: str):
    nc = await connect()
    task = envelope("ai.toronto.devops.task.deploy.v1", {
        "service": service,
        "version": version,
        "environment": environment,
        "image": f"registry.example.com/{service}:{version}",
        "strategy": {"kind": "rolling"},
    })
    payload = json.dumps(task).encode()
    reply = await nc.request(SUBMIT_SUBJECT, payload, timeout=10,
                             headers=sign(seed, SUBMIT_SUBJECT, payload))
    code = int((reply.headers or {}).get("Nats-Service-Error-Code", "0"))
    print(json.dumps({"code": code, "data": json.loads(reply.data).get("data")}), flush=True)
    await nc.close()
    return code


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="answer security gate requests")
    s.add_argument("--once", action="store_true", help="exit after the first answer")
    d = sub.add_parser("deploy", help="hand a deploy to the planner")
    d.add_argument("service")
    d.add_argument("version")
    d.add_argument("environment")
    args = parser.parse_args()
    seed_file = os.environ.get("TORONTO_IDENTITY_FILE")
    if not seed_file:
        sys.exit("set TORONTO_IDENTITY_FILE to the agent's seed file")
    seed = load_seed(seed_file)
    if args.command == "serve":
        asyncio.run(serve(seed, args.once))
    else:
        sys.exit(1 if asyncio.run(deploy(seed, args.service, args.version,
                                         args.environment)) else 0)


if __name__ == "__main__":
    main()
