#!/usr/bin/env node
// Builds @tidings/client and the gateway's embedded web assets.
//
//   node scripts/build.mjs           build everything:
//     dist/index.js, dist/react.js    the npm package (ESM, platform neutral, react external),
//     dist/*.d.ts                     its type declarations (tsc -p tsconfig.build.json),
//     ../../gateway/assets/tidings.mjs    the SDK as one browser ES module (GET /client/tidings.mjs),
//     ../../gateway/assets/dashboard.js   the dashboard (GET /assets/dashboard.js),
//     ../../gateway/assets/index.html, dashboard.css   copied from dashboard/.
//   node scripts/build.mjs --check   builds the gateway assets in memory and compares them
//                                    byte for byte with the committed ones (CI).
//   node scripts/build.mjs --assets  writes the gateway assets only (no dist/, no tsc).
//
// Output is deterministic: no timestamps, no source maps, no absolute paths.

import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repo = resolve(root, "../..");
const assetsDir = join(repo, "gateway/assets");
const distDir = join(root, "dist");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const check = process.argv.includes("--check");
const assetsOnly = process.argv.includes("--assets");

/** The path the gateway serves the SDK at; the dashboard imports it from there. */
const SDK_URL = "/client/tidings.mjs";

function src(...candidates) {
  for (const c of candidates) {
    const p = join(root, c);
    if (existsSync(p)) return p;
  }
  throw new Error(`none of ${candidates.join(", ")} exists in ${root}`);
}

/** Options shared by every browser asset. */
const browser = {
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2020",
  charset: "utf8",
  legalComments: "none",
  sourcemap: false,
  write: false,
  logLevel: "warning",
  absWorkingDir: root,
};

/** The gateway's assets, as { name: Buffer }, built in memory. */
async function buildAssets() {
  const out = {};

  const sdk = await esbuild.build({
    ...browser,
    entryPoints: [src("src/index.ts")],
    outfile: join(assetsDir, "tidings.mjs"),
    minify: true,
    keepNames: true, // `TidingsClient {…}` rather than `$ {…}` in a browser console
    banner: { js: `/* @tidings/client ${pkg.version} */` },
  });
  out["tidings.mjs"] = one(sdk);

  const dashboard = await esbuild.build({
    ...browser,
    entryPoints: [join(root, "dashboard/dashboard.ts")],
    outfile: join(assetsDir, "dashboard.js"),
    external: [SDK_URL],
    minify: false,
    banner: { js: `/* Tidings dashboard (@tidings/client ${pkg.version}); source: clients/typescript/dashboard/ */` },
  });
  out["dashboard.js"] = one(dashboard);

  out["index.html"] = readFileSync(join(root, "dashboard/index.html"));
  out["dashboard.css"] = readFileSync(join(root, "dashboard/dashboard.css"));
  return out;
}

function one(result) {
  const files = result.outputFiles ?? [];
  if (files.length !== 1) throw new Error(`expected one output file, got ${files.length}`);
  return Buffer.from(files[0].contents);
}

/** dist/: index.js and react.js (a shared chunk keeps one TidingsClient class), .d.ts files. */
async function buildPackage() {
  rmSync(distDir, { recursive: true, force: true });
  await esbuild.build({
    entryPoints: {
      index: src("src/index.ts"),
      react: src("src/react.ts", "src/react.tsx"),
    },
    outdir: distDir,
    bundle: true,
    splitting: true,
    chunkNames: "chunks/[name]-[hash]",
    format: "esm",
    platform: "neutral",
    target: "es2022", // as tsconfig.json: Node >= 20 and current browsers run it unlowered
    jsx: "automatic",
    external: ["react", "react/*", "react-dom", "react-dom/*"],
    minify: false,
    sourcemap: false,
    legalComments: "inline",
    logLevel: "warning",
    absWorkingDir: root,
  });
  const require = createRequire(import.meta.url);
  const tsc = require.resolve("typescript/lib/tsc.js");
  execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.build.json")], { cwd: root, stdio: "inherit" });
}

async function main() {
  const assets = await buildAssets();
  const rel = (name) => relative(repo, join(assetsDir, name));

  if (check) {
    const differ = [];
    for (const [name, bytes] of Object.entries(assets)) {
      const path = join(assetsDir, name);
      if (!existsSync(path)) differ.push(`${rel(name)} is missing`);
      else if (!readFileSync(path).equals(bytes)) differ.push(`${rel(name)} differs from its sources`);
    }
    if (differ.length) {
      for (const d of differ) console.error(d);
      console.error("run: (cd clients/typescript && npm run build)");
      process.exit(1);
    }
    console.log("assets match their sources");
    return;
  }

  if (!assetsOnly) await buildPackage();
  mkdirSync(assetsDir, { recursive: true });
  for (const [name, bytes] of Object.entries(assets)) {
    writeFileSync(join(assetsDir, name), bytes);
    console.log(`wrote ${rel(name)} (${bytes.length} bytes)`);
  }
  if (!assetsOnly) console.log(`wrote ${relative(repo, distDir)}/ (index.js, react.js, .d.ts)`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
