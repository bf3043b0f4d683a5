// Drive the published @fal-ai/client against a running server and print one JSON document.
//
//   FAL_KEY=... NODE_EXTRA_CA_CERTS=ca.pem node scenarios.mjs <proxy|middleware> <base-url> [GROUP]
//
// GROUP: "all" (default), "wrong_key" (runs with a key the server does not know), or a
// comma-separated list of scenario names.
//
// "proxy" configures the client the way fal documents for a server-side proxy
// (proxyUrl {url: <base>/api/fal/proxy, when: "always"}); "middleware" rewrites fal's hosts to
// <base> in a requestMiddleware. The client's code is not touched either way. Each scenario
// catches its own errors so one failure does not hide the others; pytest asserts on the JSON.
import { ApiError, ValidationError, createFalClient } from "@fal-ai/client";
import { readFileSync } from "node:fs";

const APP = "fal-ai/bitdance";
// The 16x tiny checkpoint serves 512x512 ("square"); 10 steps is the smallest allowed count and
// guidance 1.0 turns classifier-free guidance off (half the work): these tests are about the protocol.
const BASE_INPUT = {
  prompt: "a red cube on a wooden table",
  image_size: "square",
  num_inference_steps: 10,
  guidance_scale: 1.0,
  seed: 7,
  output_format: "png",
};
const BAD_INPUT = { ...BASE_INPUT, num_inference_steps: 5 };
const POLL_INTERVAL_MS = 200;
const SCENARIO_TIMEOUT_MS = 120_000;

const [mode, base, group = "all"] = process.argv.slice(2);
if (!["proxy", "middleware"].includes(mode) || !base) {
  console.error("usage: node scenarios.mjs <proxy|middleware> <base-url> [all|wrong_key|NAME,...]");
  process.exit(2);
}
const baseUrl = base.replace(/\/+$/, "");

// Whole prefixes only: a plain replace of "fal.run/" would also hit "queue.fal.run/". README's list,
// rest.alpha.fal.ai included (the storage host of releases up to 1.9.2; unused by this one).
const REWRITES = [
  ["https://queue.fal.run/", `${baseUrl}/queue/`],
  ["https://fal.run/", `${baseUrl}/`],
  ["https://rest.fal.ai/", `${baseUrl}/`],
  ["https://rest.alpha.fal.ai/", `${baseUrl}/`],
];

function rewrite(url) {
  for (const [prefix, replacement] of REWRITES) {
    if (url.startsWith(prefix)) {
      return replacement + url.slice(prefix.length);
    }
  }
  return url;
}

const seenUrls = new Set();

function makeClient(credentials) {
  const record = async (request) => {
    seenUrls.add(`${request.method} ${request.url}`);
    return request;
  };
  if (mode === "proxy") {
    return createFalClient({
      credentials,
      proxyUrl: { url: `${baseUrl}/api/fal/proxy`, when: "always" },
      // Runs before the proxy middleware: records fal's own URLs as the client built them.
      requestMiddleware: record,
    });
  }
  return createFalClient({
    credentials,
    requestMiddleware: async (request) => {
      await record(request);
      return { ...request, url: rewrite(request.url) };
    },
  });
}

// Polling returns the cumulative logs on every update: keep the last few entries of each update
// (and the count) so the report stays small; the final update keeps all of them.
const KEPT_LOG_ENTRIES = 3;

function compactUpdates(updates) {
  return updates.map((update, index) => {
    const logs = Array.isArray(update.logs) ? update.logs : null;
    const isLast = index === updates.length - 1;
    return {
      ...update,
      log_count: logs ? logs.length : null,
      logs: logs && !isLast ? logs.slice(-KEPT_LOG_ENTRIES) : logs,
    };
  });
}

function describeError(error) {
  const described = { class: error?.constructor?.name ?? typeof error, message: String(error?.message ?? error) };
  if (error instanceof ApiError) {
    Object.assign(described, {
      isApiError: true,
      isValidationError: error instanceof ValidationError,
      status: error.status,
      body: error.body ?? null,
      requestId: error.requestId,
    });
  }
  if (error instanceof ValidationError) {
    described.fieldErrors = error.fieldErrors;
    described.numInferenceStepsErrors = error.getFieldErrors("num_inference_steps");
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

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function capture(name, body) {
  const started = Date.now();
  try {
    const outcome = await withTimeout(body(), SCENARIO_TIMEOUT_MS, name);
    return { ok: true, ...outcome, elapsed_ms: Date.now() - started };
  } catch (error) {
    return { ok: false, error: describeError(error), stack: String(error?.stack), elapsed_ms: Date.now() - started };
  }
}

async function waitCompleted(fal, requestId) {
  for (;;) {
    const status = await fal.queue.status(APP, { requestId, logs: false });
    if (status.status === "COMPLETED") {
      return status;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
  }
}

function scenarios(fal) {
  return {
    async subscribe_polling() {
      const updates = [];
      let enqueued = null;
      const result = await fal.subscribe(APP, {
        input: BASE_INPUT,
        logs: true,
        pollInterval: POLL_INTERVAL_MS,
        onEnqueue: (requestId) => {
          enqueued = requestId;
        },
        onQueueUpdate: (update) => updates.push(update),
      });
      return { enqueued, updates: compactUpdates(updates), result };
    },

    async subscribe_streaming() {
      const updates = [];
      const result = await fal.subscribe(APP, {
        input: { ...BASE_INPUT, seed: 9 },
        logs: true,
        mode: "streaming",
        onQueueUpdate: (update) => updates.push(structuredClone(update)),
      });
      return { updates: compactUpdates(updates), result };
    },

    async queue() {
      const submitted = await fal.queue.submit(APP, {
        input: { ...BASE_INPUT, seed: 10 },
        priority: "low",
        startTimeout: 120,
      });
      const requestId = submitted.request_id;
      const firstStatus = await fal.queue.status(APP, { requestId, logs: true });
      const stream = await fal.queue.streamStatus(APP, { requestId, logs: true });
      const events = [];
      stream.on("data", (event) => events.push(event));
      const done = await stream.done();
      const result = await fal.queue.result(APP, { requestId });
      const finalStatus = await fal.queue.status(APP, { requestId, logs: true });
      // A stream opened on a finished request must deliver COMPLETED and close.
      const lateStream = await fal.queue.streamStatus(APP, { requestId, logs: false });
      const lateDone = await lateStream.done();
      const cancelCompleted = await expectError(() => fal.queue.cancel(APP, { requestId }));
      return { submitted, firstStatus, events, done, result, finalStatus, lateDone, cancelCompleted };
    },

    async cancel() {
      const { request_id: requestId } = await fal.queue.submit(APP, { input: { ...BASE_INPUT, seed: 12 } });
      const cancelled = await expectError(() => fal.queue.cancel(APP, { requestId }));
      const finalStatus = await waitCompleted(fal, requestId);
      const resultError = await expectError(() => fal.queue.result(APP, { requestId }));
      const unknownStatus = await expectError(() =>
        fal.queue.status(APP, { requestId: "00000000-0000-4000-8000-000000000000" }),
      );
      return { requestId, cancelled, finalStatus, resultError, unknownStatus };
    },

    async run() {
      const result = await fal.run(APP, { input: { ...BASE_INPUT, output_format: "jpeg", seed: 13 } });
      return { result };
    },

    async upload() {
      const text = `hello from @fal-ai/client ${Date.now()}\n`;
      const file = new File([text], "hello.txt", { type: "text/plain" });
      const url = await fal.storage.upload(file);
      // Read it back the way a user would: a plain GET on the returned URL, no credentials.
      const response = await fetch(url);
      const body = await response.text();
      const bytes = new Uint8Array([0, 1, 2, 3, 254, 255]);
      const blobUrl = await fal.storage.upload(new Blob([bytes]));
      const blobResponse = await fetch(blobUrl);
      const blobBody = new Uint8Array(await blobResponse.arrayBuffer());
      return {
        url,
        status: response.status,
        contentType: response.headers.get("content-type"),
        contentLength: response.headers.get("content-length"),
        matches: body === text,
        blobUrl,
        blobStatus: blobResponse.status,
        blobMatches: Buffer.from(blobBody).equals(Buffer.from(bytes)),
      };
    },

    async validation() {
      const subscribe = await expectError(() => fal.subscribe(APP, { input: BAD_INPUT, pollInterval: POLL_INTERVAL_MS }));
      const run = await expectError(() => fal.run(APP, { input: BAD_INPUT }));
      return { subscribe, run };
    },
  };
}

function wrongKeyScenarios(fal) {
  return {
    async wrong_key() {
      const submit = await expectError(() => fal.queue.submit(APP, { input: BASE_INPUT }));
      const run = await expectError(() => fal.run(APP, { input: BASE_INPUT }));
      return { submit, run };
    },
  };
}

async function main() {
  const pkg = JSON.parse(
    readFileSync(new URL("./node_modules/@fal-ai/client/package.json", import.meta.url), "utf8"),
  );
  const credentials = group === "wrong_key" ? "not-a-valid-key" : process.env.FAL_KEY;
  const fal = makeClient(credentials);
  const all = group === "wrong_key" ? wrongKeyScenarios(fal) : scenarios(fal);
  // "all", "wrong_key", or a comma-separated list of scenario names (handy when debugging one).
  const wanted = ["all", "wrong_key"].includes(group) ? Object.keys(all) : group.split(",");
  const chosen = Object.fromEntries(wanted.map((name) => [name, all[name]]));
  const report = { mode, client_version: pkg.version, node_version: process.version };
  for (const [name, body] of Object.entries(chosen)) {
    if (typeof body !== "function") {
      throw new Error(`unknown scenario ${name}`);
    }
    report[name] = await capture(name, body);
  }
  report.fal_urls = [...seenUrls].sort();
  // Exit only once the whole document is flushed: pipe writes are asynchronous in node.
  await new Promise((resolve) => process.stdout.write(JSON.stringify(report), resolve));
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
