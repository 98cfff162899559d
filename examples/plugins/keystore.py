#!/usr/bin/env python3
"""keystore: a small rekey exec plugin (protocol version 1, docs/exec-protocol.md).

It simulates an in-house key service with its state in a JSON file, so that rekey's
tests (and anyone writing a plugin) can see a whole rotation through the protocol:
API keys (`kind: dual`: list, create, verify, deactivate, revoke) and passwords
(`kind: single`: change, verify). Like a real service it keeps SHA-256 digests of
the values it issued, never the values.

    keystore.py --state FILE [--admin-sha256 HEX] [--misbehave MODE --on OP]

--admin-sha256: the admin credential rekey sends in its hello (field `value`) must
have this SHA-256 digest, or every request is refused (`fatal`): how a real plugin
would log in to its system with the credential, without it ever being in argv/env.

--misbehave rehearses a broken plugin when request OP arrives: `timeout` (never
answers), `crash` (exits 3), `garbage` (writes a non-JSON line), `unknown` (sends
a message of an unknown kind first, then answers normally), `transient` (answers
with a transient error), `wrong_shape` (answers with the request's secret where the
result's boolean goes: a plugin bug whose error must not quote the value); `version` answers the hello with protocol version 99; `rate_limited` answers the first OP with a
rate-limited error (retry after 50 ms), then normally; `env`
logs the names of the environment variables it got; `fds` logs the file
descriptors it inherited; `long_line` logs one 4 MiB line; `spawn` starts a
helper process (it sleeps) and never answers OP; `daemon` starts such a helper
at the hello and then works normally (rekey must stop both with the plugin).

Logs go to stderr (rekey relays them to its log as is: never print a secret).
"""

import argparse
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time


def digest(value):
    return hashlib.sha256(value.encode()).hexdigest()


class Store:
    def __init__(self, path):
        self.path = path

    def load(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {"accounts": {}}

    def save(self, state):
        # Atomic: a crash leaves the old file or the new one.
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class Failure(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


def handle(store, req):
    op = req["op"]
    account = req.get("account")
    if not account:
        raise Failure("fatal", "keystore credentials need an account")
    state = store.load()
    acct = state["accounts"].setdefault(account, {"keys": []})
    if op == "preflight":
        return {}
    if op == "list":
        return {"keys": [{"id": k["id"], "active": k["active"], "created_at": k["created_at"], "tag": k["tag"]} for k in acct["keys"]]}
    if op == "create":
        if len(acct["keys"]) >= 2:
            raise Failure("fatal", "quota: the account already holds 2 keys")
        value = "ks_" + secrets.token_urlsafe(24)
        key_id = "ks-" + secrets.token_hex(4)
        acct["keys"].append({"id": key_id, "sha256": digest(value), "active": True, "created_at": int(time.time()), "tag": req.get("tag"), "settings": req.get("settings", {})})
        store.save(state)
        return {"key_id": key_id, "secret": value}
    if op == "change":
        acct["password_sha256"] = digest(req["new_secret"])
        store.save(state)
        return {}
    if op == "verify":
        d = digest(req["secret"])
        key_id = req.get("key_id")
        if key_id is None:
            return {"valid": acct.get("password_sha256") == d}
        return {"valid": any(k["id"] == key_id and k["active"] and k["sha256"] == d for k in acct["keys"])}
    if op == "deactivate":
        for k in acct["keys"]:
            if k["id"] == req["key_id"]:
                k["active"] = False
        store.save(state)
        return {}
    if op == "revoke":
        acct["keys"] = [k for k in acct["keys"] if k["id"] != req["key_id"]]
        store.save(state)
        return {}
    raise Failure("fatal", f"keystore does not know the operation {op!r}")


def open_fds():
    """The descriptors open now (the listing's own is closed by the time its
    entries are checked, so it drops out)."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            os.readlink("/proc/self/fd/" + name)
            fds.append(int(name))
        except OSError:
            pass
    return sorted(fds)


def helper(state):
    """A helper process of the plugin's own (its argv names the state file, so
    tests can find it); it outlives the plugin unless rekey stops the group."""
    subprocess.Popen([os.readlink("/proc/self/exe"), "-c", "import time; time.sleep(3600)", state],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", required=True)
    parser.add_argument("--misbehave", default=None)
    parser.add_argument("--on", default=None)
    parser.add_argument("--admin-sha256", default=None)
    args = parser.parse_args()
    store = Store(args.state)
    admin_ok = args.admin_sha256 is None
    limited_once = False

    for line in sys.stdin:
        msg = json.loads(line)
        kind = msg.get("type")
        if kind == "hello":
            if args.misbehave == "fds":
                print("keystore fds: " + ",".join(str(fd) for fd in open_fds()), file=sys.stderr, flush=True)
            if args.misbehave == "long_line":
                print("keystore: " + "x" * (4 << 20), file=sys.stderr, flush=True)
            if args.misbehave == "daemon":
                helper(args.state)
            if args.misbehave == "env":
                # Names only: what the plugin was given, never values.
                print("keystore env: " + ",".join(sorted(os.environ)), file=sys.stderr, flush=True)
            if 1 not in msg.get("protocol_versions", []):
                print("keystore: rekey does not speak protocol version 1", file=sys.stderr)
                return 2
            admin = (msg.get("admin") or {}).get("value")
            if args.admin_sha256 is not None and admin is not None:
                admin_ok = digest(admin) == args.admin_sha256
            version = 99 if args.misbehave == "version" else 1
            send({"type": "hello", "protocol_version": version, "name": "keystore"})
            continue
        if kind != "request":
            continue  # Unknown kinds are skipped, as the protocol asks.
        op = msg["op"]
        print(f"keystore: {op} for {msg['credential']}", file=sys.stderr, flush=True)
        if not admin_ok:
            send({"type": "response", "id": msg["id"], "error": {"kind": "fatal", "message": "admin credential refused"}})
            continue
        if args.on == op:
            if args.misbehave == "rate_limited" and not limited_once:
                limited_once = True
                send({"type": "response", "id": msg["id"], "error": {"kind": "rate_limited", "message": "429", "retry_after_ms": 50}})
                continue
            if args.misbehave == "timeout":
                time.sleep(3600)
            elif args.misbehave == "spawn":
                helper(args.state)
                time.sleep(3600)
            elif args.misbehave == "crash":
                return 3
            elif args.misbehave == "garbage":
                sys.stdout.write("Traceback (most recent call last): oops\n")
                sys.stdout.flush()
                continue
            elif args.misbehave == "unknown":
                send({"type": "progress", "percent": 50})
            elif args.misbehave == "wrong_shape":
                send({"type": "response", "id": msg["id"], "result": {"valid": msg.get("secret") or msg.get("new_secret")}})
                continue
            elif args.misbehave == "transient":
                send({"type": "response", "id": msg["id"], "error": {"kind": "transient", "message": "backend busy"}})
                continue
        try:
            send({"type": "response", "id": msg["id"], "result": handle(store, msg)})
        except Failure as f:
            send({"type": "response", "id": msg["id"], "error": {"kind": f.kind, "message": f.message}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
