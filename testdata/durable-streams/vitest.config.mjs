// Runs the Durable Streams server conformance suite (pinned in
// package-lock.json) against CONFORMANCE_TEST_URL. The suite's own CLI
// points vitest at a file inside node_modules, which vitest's default
// exclude skips; this config includes it by name instead.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["node_modules/@durable-streams/server-conformance-tests/dist/test-runner.js"],
    exclude: [],
    testTimeout: 30000,
    hookTimeout: 30000,
  },
});
