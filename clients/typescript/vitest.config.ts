import { defineConfig } from "vitest/config";

// The core runs in plain Node (every browser API it needs is injected by the tests); the
// React hook tests opt into happy-dom with a `// @vitest-environment happy-dom` comment.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
    restoreMocks: true,
  },
});
