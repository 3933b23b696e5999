#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into fuzz/corpus/<target>/.

Run once when a target is added (the committed corpus is then grown by fuzzing and
minimised with `cargo fuzz cmin`). GitHub payloads come from @octokit/webhooks-examples
(the package the e2e suite uses), when its index.json is given as the first argument."""

import json
import struct
import sys
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "corpus"


def mp(v):
    """A minimal MessagePack encoder (maps with string keys, like rmp-serde's named maps)."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        if 0 <= v < 2**32:
            return b"\xce" + struct.pack(">I", v)
        if v >= 0:
            return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        if len(b) < 256:
            return b"\xd9" + bytes([len(b)]) + b
        return b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, (bytes, bytearray)):
        return b"\xc4" + bytes([len(v)]) + bytes(v)
    if isinstance(v, list):
        head = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdc" + struct.pack(">H", len(v))
        return head + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        head = bytes([0x80 | len(v)]) if len(v) < 16 else b"\xde" + struct.pack(">H", len(v))
        return head + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / f"seed-{name}").write_bytes(data)


def j(v):
    return json.dumps(v, separators=(",", ":"))


FRAMES = [
    {"type": "subscribe", "id": 1, "channel": "project:p1"},
    {"type": "subscribe", "id": 2, "channel": "user:u1", "since": 124, "epoch": "1732237200000000000"},
    {"type": "subscribe", "channel": "broadcast"},
    {"type": "unsubscribe", "id": 3, "channel": "project:p1"},
    {"type": "publish", "id": 4, "channel": "project:p1", "event": "chat_message",
     "data": {"text": "hi", "n": [1, 2.5, None, True, -7, 18446744073709551615], "nested": {"k": "v"}},
     "durable": True, "msg_id": "m-1"},
    {"type": "publish", "channel": "user:u1", "event": "typing"},
    {"type": "ack", "channel": "user:u1", "seq": 456},
    {"type": "ping", "id": 5},
    {"type": "ping"},
    {"type": "auth", "id": 6, "token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2ln"},
    {"type": "presence", "id": 7, "channel": "project:p1"},
    {"type": "launch", "id": 9},
    {"type": "ack", "id": 12, "channel": "user:u"},
]


def frames():
    for i, f in enumerate(FRAMES):
        write("client_frame_json", f"{i:02}-{f['type']}.json", j(f))
        write("client_frame_msgpack", f"{i:02}-{f['type']}.mp", mp(f))
    deep = {"type": "publish", "channel": "project:p1", "event": "e", "data": None}
    inner = None
    for _ in range(62):
        inner = [inner]
    deep["data"] = inner
    write("client_frame_json", "deep-63.json", j(deep))
    write("client_frame_msgpack", "deep-63.mp", mp(deep))
    write("client_frame_json", "junk.json", '{"type":"subscribe",')


def bodies():
    for i, b in enumerate([
        {"event": "pr.merged", "data": {"pr": 42, "title": "Fix \u00e9\u4e2d"}, "id": "abc"},
        {"event": "x"},
        {"event": "agent_run_progress", "data": [1, 2.5, "s", None, {"a": {"b": []}}]},
        {"event": "ok", "id": ""},
        {"data": 1},
    ]):
        write("publish_body", f"{i}.json", j(b))
        write("publish_body", f"{i}.mp", mp(b))


def channels():
    for i, c in enumerate(["project:p1", "user:u-1_A", "broadcast", "project:" + "a" * 128,
                           "project:a.b", "tidings.events.project.p1", "tidings.live.broadcast",
                           "tidings.stored.user.u1", "user:\u00e4"]):
        write("channel", f"{i}", c)


def jwts():
    write("jwt", "hs-exp-now", '{"alg":"HS256","typ":"JWT"}\n{"sub":"u1","projects":["p1"],"publish":["project:p1"],"exp":%T}')
    write("jwt", "hs-full", '{"alg":"HS256"}\n{"sub":"svc","role":"service","projects":["*"],"publish":["*"],"iat":%T,"nbf":%T,"exp":%T}')
    write("jwt", "hs-no-sub", '{"alg":"HS256"}\n{"exp":%T}')
    write("jwt", "hs-expired", '{"alg":"HS256"}\n{"sub":"u1","exp":1}')
    write("jwt", "alg-none", '{"alg":"none"}\n{"sub":"u1","exp":%T}')
    write("jwt", "alg-rs", '{"alg":"RS256"}\n{"sub":"u1","exp":%T}')
    write("jwt", "raw-none", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSIsImV4cCI6OTk5OTk5OTk5OX0.")
    write("jwt", "raw-hs", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSIsImV4cCI6OTk5OTk5OTk5OX0.c2lnbmF0dXJl")


def cursors():
    for i, c in enumerate(["e1732237200000000000;w120;project:p1=124;user:u1=130", "e123;w7",
                           "e;w0;broadcast=1", "e1;w2;project:a.b=3", " e1;w18446744073709551615 "]):
        write("sse_cursor", f"{i}", c)


def prefs():
    docs = [
        {"email": "a.b@example.com", "phone": "+14155550123", "timezone": "Europe/Paris",
         "channels": {"sms": False}, "categories": {"billing": {"email": True, "push": False}},
         "quiet_hours": {"start": "22:00", "end": "07:00"},
         "push_subscriptions": [{"endpoint": "https://push.example.com/s/1", "keys": {"p256dh": "BAx", "auth": "k"}}],
         "webhook_url": "https://hooks.example.com/x"},
        {"timezone": "America/New_York", "quiet_hours": {"start": "01:00", "end": "03:30"}},
        {"timezone": "Europe/Paris", "quiet_hours": {"start": "01:00", "end": "02:30"}},
        {"quiet_hours": {"start": "09:00", "end": "17:00"}},
        {"webhook_url": "http://127.0.0.1:8080/x"},
        {"webhook_url": "https://2130706433/"},
        {"email": "nope"},
        {"fax": "1"},
    ]
    for i, d in enumerate(docs):
        write("preferences", f"{i}.json", j(d))


def templates():
    sources = [
        "{{ title }}",
        "Hello {{ user.name | default('there') }}, {{ count + 1 }} new",
        "{% for i in items %}<li>{{ i.name }}</li>{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{{ 'x' * 10000000 }}",
        "{% macro m(x) %}{{ m(x) }}{% endmacro %}{{ m(1) }}",
        "line one\nline {{ two",
        "{{ title|safe }}{{ body|e }}{% if count > 1 %}s{% endif %}",
    ]
    data = [None, {"title": "<x>", "items": [{"name": "</p>"}], "count": 3},
            {"title": ["deep", {"a": [[[[1]]]]}], "body": 1e308, "count": "x"}]
    for i, s in enumerate(sources):
        for k, d in enumerate(data):
            raw = s.encode() if d is None else s.encode() + b"\0" + j(d).encode()
            write("template", f"{i}-{k}", raw)


def github(index):
    small = {"action": "closed", "number": 7,
             "pull_request": {"number": 7, "title": "Fix", "state": "closed", "merged": True,
                              "html_url": "https://github.com/o/r/pull/7", "user": {"login": "octocat"},
                              "head": {"sha": "abc"}},
             "repository": {"id": 42, "full_name": "o/r", "html_url": "https://github.com/o/r"}}
    write("github_payload", "pr-small.json", j(small))
    write("github_payload", "check-suite-small.json", j({"action": "completed",
          "check_suite": {"head_sha": "abc", "status": "completed", "conclusion": "success", "app": {"name": "CI"}},
          "repository": {"id": 42, "full_name": "o/r", "html_url": "https://github.com/o/r"}}))
    write("github_payload", "no-repo-id.json", j({"action": "opened", "repository": {"id": -1}}))
    from urllib.parse import quote
    write("github_payload", "form", "payload=" + quote(j(small)))
    if index:
        examples = json.load(open(index))
        for e in examples:
            if e["name"] in ("pull_request", "check_run", "check_suite", "ping"):
                # Two per event: they are large (10 to 25 kB).
                for i, p in enumerate(e["examples"][:2]):
                    write("github_payload", f"octokit-{e['name']}-{i}.json", j(p))


if __name__ == "__main__":
    frames()
    bodies()
    channels()
    jwts()
    cursors()
    prefs()
    templates()
    github(sys.argv[1] if len(sys.argv) > 1 else None)
