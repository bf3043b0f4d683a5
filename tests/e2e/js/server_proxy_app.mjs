// A web app's backend as fal documents it for Express: @fal-ai/server-proxy's handler on
// /api/fal/proxy, holding the key (FAL_KEY) so the browser never sees it; plus the one change that
// points it at a BitDance server instead of fal: the x-fal-target-url header the browser's client sets
// (https://queue.fal.run/..., https://fal.run/..., https://rest.fal.ai/...) is rewritten to BitDance
// before the handler checks it against allowedUrlPatterns and forwards the call.
//
//   FAL_KEY=<a BITDANCE_API_KEYS key> BITDANCE_URL=https://host:port NODE_EXTRA_CA_CERTS=ca.pem \
//     node server_proxy_app.mjs [PORT]
//
// Prints "listening on http://127.0.0.1:<port>" once it accepts connections (PORT 0: any free port).
import express from "express";
import * as falProxy from "@fal-ai/server-proxy/express";

const BITDANCE_URL = process.env.BITDANCE_URL?.replace(/\/+$/, "");
if (!BITDANCE_URL || !process.env.FAL_KEY) {
  console.error("set BITDANCE_URL (the BitDance server's base URL) and FAL_KEY (one of its API keys)");
  process.exit(2);
}

// Whole prefixes only, queue first ("fal.run/" is a suffix of "queue.fal.run/").
const REWRITES = [
  ["https://queue.fal.run/", `${BITDANCE_URL}/queue/`],
  ["https://fal.run/", `${BITDANCE_URL}/`],
  ["https://rest.fal.ai/", `${BITDANCE_URL}/`],
  ["https://rest.alpha.fal.ai/", `${BITDANCE_URL}/`],
];

function toBitDance(request, _response, next) {
  const target = request.headers["x-fal-target-url"];
  const hit = typeof target === "string" && REWRITES.find(([prefix]) => target.startsWith(prefix));
  if (hit) request.headers["x-fal-target-url"] = hit[1] + target.slice(hit[0].length);
  next();
}

const app = express();
app.all(
  falProxy.route, // "/api/fal/proxy"
  express.json(), // the handler forwards JSON.stringify(request.body)
  toBitDance,
  falProxy.createHandler({
    allowedUrlPatterns: [`${new URL(BITDANCE_URL).host}/**`],
    // POSTs are checked against the target's path: on fal "fal-ai/bitdance"; here the queue's is
    // "queue/fal-ai/bitdance" and uploads start at "storage/upload/initiate" (fal exempts *.fal.ai).
    allowedEndpoints: ["fal-ai/bitdance", "queue/fal-ai/bitdance", "storage/upload/initiate*"],
  }),
);

const server = app.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
