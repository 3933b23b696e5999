import { defineConfig } from "vitest/config";

// Node 20 has a global WebSocket only with --experimental-websocket (Node 22 has it by default;
// the flag is then unneeded). It is passed to the test workers here, so that a plain
// `npx vitest run` works as well as `npm test` (which also sets it in NODE_OPTIONS).
const nodeMajor = Number(process.versions.node.split(".")[0]);
const execArgv = nodeMajor < 22 ? ["--experimental-websocket"] : [];

// The core runs in plain Node (every browser API it needs is injected by the tests); the
// React hook tests opt into happy-dom with a `// @vitest-environment happy-dom` comment.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
    restoreMocks: true,
    execArgv,
  },
});
