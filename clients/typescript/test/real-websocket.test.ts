/**
 * Against Node's own WebSocket (undici; global from Node 22, or Node 20 with
 * `--experimental-websocket`) and a minimal RFC 6455 server: checks what fakes cannot,
 * that a real implementation negotiates `tidings.v1.json`, gets the auth frame first, and
 * delivers each frame exactly once. Node 20 needs `--experimental-websocket`, which
 * vitest.config.ts passes to the test workers (and the package's `test` script sets too);
 * without a WebSocket this test fails rather than skips.
 */
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { Duplex } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import { TidingsClient, type MessageFrame } from "../src/index.js";

const hasWebSocket = typeof (globalThis as { WebSocket?: unknown }).WebSocket === "function";

function frame(text: string): Buffer {
  const payload = Buffer.from(text);
  const header = payload.length < 126 ? Buffer.from([0x81, payload.length]) : Buffer.from([0x81, 126, payload.length >> 8, payload.length & 255]);
  return Buffer.concat([header, payload]);
}

/** Parses masked client text frames out of `buf`; returns the texts and the rest. */
function parse(buf: Buffer): { texts: string[]; rest: Buffer } {
  const texts: string[] = [];
  let off = 0;
  while (buf.length - off >= 6) {
    let len = buf[off + 1]! & 127;
    let p = off + 2;
    if (len === 126) {
      len = buf.readUInt16BE(p);
      p += 2;
    }
    if (buf.length < p + 4 + len) break;
    const mask = buf.subarray(p, p + 4);
    const data = Buffer.from(buf.subarray(p + 4, p + 4 + len));
    for (let i = 0; i < data.length; i++) data[i]! ^= mask[i % 4]!;
    if ((buf[off]! & 15) === 1) texts.push(data.toString());
    off = p + 4 + len;
  }
  return { texts, rest: buf.subarray(off) };
}

let server: Server | null = null;
afterEach(() => {
  server?.close();
  server = null;
});

describe("with Node's WebSocket", () => {
  it("is available (vitest.config.ts enables it on Node 20)", () => {
    expect(hasWebSocket).toBe(true);
  });

  it("connects, authenticates first, subscribes and delivers each frame once", async () => {
    const received: string[] = [];
    let protocol = "";
    server = createServer();
    server.on("upgrade", (req, socket: Duplex) => {
      protocol = String(req.headers["sec-websocket-protocol"] ?? "");
      const accept = createHash("sha1").update(`${req.headers["sec-websocket-key"]}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest("base64");
      socket.write(
        `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: tidings.v1.json\r\n\r\n`,
      );
      let buf: Buffer = Buffer.alloc(0);
      socket.on("data", (chunk: Buffer) => {
        const r = parse(Buffer.concat([buf, chunk]));
        buf = r.rest;
        for (const t of r.texts) {
          received.push(t);
          const f = JSON.parse(t) as { type: string; id?: number; channel?: string };
          if (f.type === "auth") socket.write(frame(JSON.stringify({ type: "welcome", session: "s", node: "n", user: "u1", heartbeat_ms: 25000 })));
          if (f.type === "subscribe") {
            socket.write(frame(JSON.stringify({ type: "reply", id: f.id, ok: true, channel: f.channel, epoch: "E", recovered: true, missed: 0 })));
            for (const seq of [1, 2]) {
              const m = { type: "message", channel: f.channel, event: "e", data: {}, id: `m${seq}`, ts: "t", seq, prev: seq - 1 };
              socket.write(frame(JSON.stringify(m)));
            }
            // A sentinel after them: frames arrive in order, so a duplicate of 1 or 2 would come before it.
            socket.write(frame(JSON.stringify({ type: "message", channel: f.channel, event: "end", data: {}, id: "end", ts: "t" })));
          }
        }
      });
    });
    await new Promise<void>((r) => server!.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    const client = new TidingsClient({ url: `ws://127.0.0.1:${port}/ws`, token: "tok" });
    const got: MessageFrame[] = [];
    const done = new Promise<void>((resolve) =>
      client.subscribe("project:p1", {
        onMessage: (m) => {
          got.push(m);
          if (m.event === "end") resolve();
        },
      }),
    );
    client.connect();
    await done;
    expect(protocol).toBe("tidings.v1.json");
    expect(JSON.parse(received[0]!)).toEqual({ type: "auth", token: "tok" });
    expect(got.map((m) => m.seq ?? m.event)).toEqual([1, 2, "end"]);
    expect(client.state.status).toBe("connected");
    client.disconnect();
  });
});
