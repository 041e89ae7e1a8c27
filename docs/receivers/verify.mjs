// A receiver of ae_events webhooks that checks every request's Standard Webhooks signature
// before it trusts the body (docs/receivers.md). Node.js 18+, npm's standardwebhooks:
//
//     npm install standardwebhooks@1.3.0
//     WEBHOOK_SECRET=whsec_... PORT=8000 node verify.mjs
//
// Answers 204 to a verified request and 400 to any other, and prints one line per request.
import { createServer } from "node:http";
import { Webhook, WebhookVerificationError } from "standardwebhooks";

// The endpoint's secret as create_endpoint (or rotate_endpoint_secret) returned it.
const webhook = new Webhook(process.env.WEBHOOK_SECRET);

createServer((request, response) => {
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", () => {
    // The body's bytes exactly as received: the signature covers them, not a re-encoding.
    const body = Buffer.concat(chunks);
    let payload;
    try {
      // Checks webhook-id, webhook-timestamp (within 5 minutes) and webhook-signature (one of
      // its space-separated v1 signatures), then parses the JSON.
      payload = webhook.verify(body, request.headers);
    } catch (error) {
      if (!(error instanceof WebhookVerificationError)) throw error;
      console.log("refused", request.headers["webhook-id"], error.message);
      response.writeHead(400).end();
      return;
    }
    // webhook-id is the same on every retry and redelivery: de-duplicate on it.
    const webhookId = request.headers["webhook-id"];
    const key = request.headers["ae-subscription-key"]; // ae.test_instance.created / .updated
    const test = request.headers["ae-test"] === "true"; // sent by ae_events.send_test_event
    console.log("verified", webhookId, key, test ? "test" : "event", "instance", payload.id);
    // Answer quickly (2xx = delivered); do slow work after, or in a queue.
    response.writeHead(204).end();
  });
}).listen(Number(process.env.PORT ?? 8000), process.env.HOST ?? "127.0.0.1");
