// One submit -> status -> result -> cancel round (plus an upload) with one pinned fal JS client.
//
//   FAL_KEY=... NODE_EXTRA_CA_CERTS=ca.pem node client_round.mjs <PACKAGE> <middleware|proxy> <URL>
//
// PACKAGE is a dependency name of package.json: "@fal-ai/client" (the newest pin), an alias such as
// "fal-ai-client-1.8.5" (npm:@fal-ai/client@1.8.5, several versions side by side), or
// "@fal-ai/serverless-client" (the deprecated 0.x package, configured through its global fal.config).
// "middleware": URL is this server's base; a requestMiddleware rewrites fal's hosts to it, the way
// README documents for every version. "proxy": URL is a proxy endpoint speaking fal's x-fal-target-url
// convention (this server's /api/fal/proxy, or an app's @fal-ai/server-proxy route), configured with
// proxyUrl {url, when: "always"} (the form node needs; @fal-ai/client >= 1.10 only). Without FAL_KEY
// the client sends no credentials, as a browser behind an app's proxy does. Prints one JSON document.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

const APP = "fal-ai/bitdance";
// The 16x tiny checkpoint serves 512x512 ("square"); 10 steps is the smallest allowed count and
// guidance 1.0 turns classifier-free guidance off (half the work): the round is about the protocol.
const BASE_INPUT = {
  prompt: "a red cube on a wooden table",
  image_size: "square",
  num_inference_steps: 10,
  guidance_scale: 1.0,
  seed: 31,
  output_format: "png",
};
const POLL_INTERVAL_MS = 200;
const ROUND_TIMEOUT_MS = 180_000;

const [packageName, mode, url] = process.argv.slice(2);
if (!packageName || !["middleware", "proxy"].includes(mode) || !url) {
  console.error("usage: node client_round.mjs <package> <middleware|proxy> <url>");
  process.exit(2);
}
const target = url.replace(/\/+$/, "");

// Whole prefixes only, queue first ("fal.run/" is a suffix of "queue.fal.run/"). Clients up to 1.9.2
// and the serverless client call their storage API on rest.alpha.fal.ai, later ones on rest.fal.ai.
const REWRITES = [
  ["https://queue.fal.run/", `${target}/queue/`],
  ["https://fal.run/", `${target}/`],
  ["https://rest.fal.ai/", `${target}/`],
  ["https://rest.alpha.fal.ai/", `${target}/`],
];

function rewrite(falUrl) {
  const hit = REWRITES.find(([prefix]) => falUrl.startsWith(prefix));
  return hit ? hit[1] + falUrl.slice(hit[0].length) : falUrl;
}

const seenUrls = new Set();
const lib = require(packageName);
// Read from disk: newer releases do not export ./package.json.
const pkg = JSON.parse(readFileSync(new URL(`./node_modules/${packageName}/package.json`, import.meta.url), "utf8"));
const legacy = typeof lib.createFalClient !== "function"; // @fal-ai/serverless-client: one global client

function makeClient() {
  const credentials = process.env.FAL_KEY || undefined;
  const record = async (request) => {
    seenUrls.add(`${request.method} ${request.url}`);
    return request;
  };
  const config =
    mode === "proxy"
      ? { credentials, proxyUrl: { url: target, when: "always" }, requestMiddleware: record }
      : {
          credentials,
          requestMiddleware: async (request) => {
            await record(request);
            return { ...request, url: rewrite(request.url) };
          },
        };
  if (legacy) {
    lib.config(config);
    return lib;
  }
  return lib.createFalClient(config);
}

function describeError(error) {
  const described = { class: error?.constructor?.name ?? typeof error, message: String(error?.message ?? error) };
  if (error instanceof lib.ApiError) {
    Object.assign(described, { isApiError: true, status: error.status, body: error.body ?? null });
  }
  return described;
}

async function expectError(call) {
  try {
    const value = await call();
    return { class: null, returned: value ?? null };
  } catch (error) {
    return describeError(error);
  }
}

// @fal-ai/client answers {data, requestId}; the serverless client answers the output itself.
function outputOf(result) {
  return legacy ? result : result.data;
}

async function pollUntilCompleted(fal, requestId, logs) {
  const statuses = [];
  for (;;) {
    const status = await fal.queue.status(APP, { requestId, logs });
    statuses.push(status);
    if (status.status === "COMPLETED") {
      return statuses;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
  }
}

async function round(fal) {
  const submitted = await fal.queue.submit(APP, { input: BASE_INPUT });
  const requestId = submitted.request_id;
  // Submitted right behind the first one, so it is still waiting when it is cancelled.
  const victim = await fal.queue.submit(APP, { input: { ...BASE_INPUT, seed: 32 } });
  const cancelQueued = await expectError(() => fal.queue.cancel(APP, { requestId: victim.request_id }));
  const statuses = await pollUntilCompleted(fal, requestId, true);
  const result = await fal.queue.result(APP, { requestId });
  const cancelCompleted = await expectError(() => fal.queue.cancel(APP, { requestId }));
  const cancelledStatuses = await pollUntilCompleted(fal, victim.request_id, false);
  const cancelledResult = await expectError(() => fal.queue.result(APP, { requestId: victim.request_id }));

  const text = `hello from ${pkg.name} ${pkg.version}\n`;
  const fileUrl = await fal.storage.upload(new Blob([text], { type: "text/plain" }));
  const download = await fetch(fileUrl); // a plain GET, no credentials, as a user would
  const downloaded = await download.text();

  const last = statuses[statuses.length - 1];
  return {
    submitted,
    cancelQueued,
    statusKinds: statuses.map((status) => status.status),
    finalStatus: last,
    output: outputOf(result),
    cancelCompleted,
    cancelledFinalStatus: cancelledStatuses[cancelledStatuses.length - 1],
    cancelledResult,
    upload: { fileUrl, status: download.status, matches: downloaded === text },
  };
}

function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the round did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function main() {
  const report = { package: packageName, name: pkg.name, client_version: pkg.version, mode, node_version: process.version };
  const started = Date.now();
  try {
    Object.assign(report, { ok: true }, await withTimeout(round(makeClient()), ROUND_TIMEOUT_MS));
  } catch (error) {
    Object.assign(report, { ok: false, error: describeError(error), stack: String(error?.stack) });
  }
  report.elapsed_ms = Date.now() - started;
  report.fal_urls = [...seenUrls].sort();
  await new Promise((resolve) => process.stdout.write(JSON.stringify(report), resolve));
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
