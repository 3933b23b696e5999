// GitHub's own published example payloads (@octokit/webhooks-examples) through the real
// GitHub route of a real gateway: every pull_request, check_run and check_suite example
// becomes exactly the message of CONTRACT §6, and ping publishes nothing.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createRequire } from "node:module";

import { Cluster, api, deliverGithub } from "./harness.mjs";

const examples = createRequire(import.meta.url)("@octokit/webhooks-examples");
const byEvent = (name) => examples.find((e) => e.name === name)?.examples ?? [];

let cluster;
before(async () => {
  cluster = await Cluster.start({ worker: false });
});
after(async () => {
  await cluster?.stop();
});

const deliver = (event, payload, delivery) => deliverGithub(cluster.gateway.base, event, payload, delivery);

async function stored(channel, seq) {
  const { messages } = await api(cluster.gateway.base, "GET", `/api/v1/channels/${channel}/history?since=${seq - 1}&limit=1`);
  assert.equal(messages[0]?.seq, seq, `message ${seq} on ${channel}`);
  return messages[0];
}

function expected(event, p) {
  if (event === "pull_request") {
    const pr = p.pull_request;
    return {
      event: "pr_notification",
      data: {
        action: p.action,
        number: pr.number,
        title: pr.title,
        state: pr.state,
        merged: pr.merged ?? false,
        url: pr.html_url,
        author: pr.user.login,
        head_sha: pr.head.sha,
        repository: p.repository.full_name,
      },
    };
  }
  const c = p[event];
  const suite = event === "check_suite";
  return {
    event: "validation_update",
    data: {
      action: p.action,
      name: suite ? c.app.name : c.name,
      status: c.status,
      conclusion: c.conclusion ?? null,
      url: suite ? `${p.repository.html_url}/commit/${c.head_sha}/checks` : c.html_url,
      head_sha: c.head_sha,
      app: c.app.name,
      repository: p.repository.full_name,
    },
  };
}

for (const event of ["pull_request", "check_run", "check_suite"]) {
  test(`every ${event} example maps to the contract's message`, async () => {
    const list = byEvent(event);
    assert.ok(list.length > 0, `no ${event} examples`);
    for (const [i, payload] of list.entries()) {
      const { status, answer } = await deliver(event, payload, `ex-${event}-${i}`);
      assert.equal(status, 202, JSON.stringify(answer));
      const channel = `project:${payload.repository.id}`;
      assert.equal(answer.channel, channel);
      const msg = await stored(channel, answer.seq);
      const want = expected(event, payload);
      assert.equal(msg.event, want.event);
      assert.deepEqual(msg.data, want.data, `${event} example ${i} (${payload.action})`);
    }
  });
}

test("ping examples are answered 2xx and publish nothing", async () => {
  for (const [i, payload] of byEvent("ping").entries()) {
    const { status, answer } = await deliver("ping", payload, `ex-ping-${i}`);
    assert.equal(status, 200);
    assert.equal(answer.outcome, "ignored");
    assert.equal(answer.seq, undefined);
  }
});

test("a redelivered example is answered with the first copy's seq", async () => {
  const payload = byEvent("pull_request")[0];
  const first = await deliver("pull_request", payload, "redelivered-1");
  const again = await deliver("pull_request", payload, "redelivered-1");
  assert.equal(first.status, 202);
  assert.equal(again.status, 200);
  assert.equal(again.answer.outcome, "duplicate");
  assert.equal(again.answer.seq, first.answer.seq);
  const { messages } = await api(
    cluster.gateway.base,
    "GET",
    `/api/v1/channels/project:${payload.repository.id}/history?since=${first.answer.seq}`,
  );
  assert.deepEqual(messages, [], "nothing published after the first copy");
});
